"""An experiment that raises, registered when this module is imported (as a user's own
module would register one): what ``reproduce(jobs=2)`` does with a failing worker."""

import mechcausal.experiments as ex


def _fail(ctx):
    raise ValueError("this experiment fails on purpose")


FAILING = ex.Experiment("failing_on_purpose", "-", "raises", _fail, {}, {}, trains=False,
                        seconds={"quick": 1000.0, "paper": 1000.0})
ex.register_experiment(FAILING, replace=True)
