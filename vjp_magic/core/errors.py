"""The one exception type for user mistakes.

Anything raised as :class:`VJPUsageError` is a mistake in how the package was
used (a wrong name, an input that does not require grad, ...). The magics layer
turns it into a short IPython ``UsageError``; every other exception is a bug and
keeps its traceback.
"""


class VJPUsageError(ValueError):
    """A user mistake, with a message that says what to do."""


# PyTorch's error texts the package recognises (matched with ``in str(error)``): one place.
TORCH_INPLACE = "modified by an inplace operation"  # a saved tensor was changed in place
TORCH_FREED_GRAPH = "second time"  # "Trying to backward through the graph a second time"
