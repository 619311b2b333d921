"""The symbolic tensor: enough of ``torch.Tensor`` for small teaching cells, holding a numpy
object array of SymPy expressions. Every operator, method and torch function on it goes
through the one rule table (:func:`~.registry.apply`)."""
from __future__ import annotations

import numpy as np
import torch

from .errors import Unsupported, UnsupportedAttribute
from .registry import ALIASES, RULES, apply, op_name, qualified, unreflect

_INPLACE_KEEP = {"requires_grad_", "retain_grad"}


class SymTensor:
    """A tensor of SymPy expressions: enough of ``torch.Tensor`` for small teaching cells.

    ``backward`` does nothing and ``grad`` is None, so a cell's own ``y.backward(v)`` and
    ``x.grad`` checks run harmlessly; ``.data``, ``.item()``, ``detach`` and comparisons
    raise :class:`Unsupported` (they leave the symbolic world).
    """

    __array_ufunc__ = None  # numpy defers to our reflected operators
    __hash__ = object.__hash__

    def __init__(self, array: np.ndarray, dtype: torch.dtype, name: str | None = None):
        self.array = array
        self.dtype = dtype
        self.input_name = name  # set for the symbolic inputs: they must not change in place

    # -- what a tensor tells about itself
    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.array.shape)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.array.ndim

    ndimension = dim

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def numel(self) -> int:
        return self.array.size

    nelement = numel

    def __len__(self) -> int:
        if self.array.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.array.shape[0]

    def __iter__(self):
        if self.array.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.array.shape[0]))

    device = torch.device("cpu")
    requires_grad = True
    grad = None
    grad_fn = None
    is_cuda = False

    @property
    def is_leaf(self) -> bool:
        return self.input_name is not None

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def T(self):
        return apply("T", self, display="Tensor.T")

    @property
    def mT(self):
        return apply("mT", self, display="Tensor.mT")

    # -- autograd calls in a cell are no-ops here
    def backward(self, *args, **kwargs) -> None:
        return None

    def requires_grad_(self, requires_grad=True):
        return self

    def retain_grad(self) -> None:
        return None

    # -- leaving the symbolic world
    @property
    def data(self):
        raise Unsupported("Tensor.data", "is not supported (it detaches from the graph)")

    def detach(self):
        raise Unsupported("Tensor.detach", "is not supported (it detaches from the graph)")

    def _leave(self, what):
        raise Unsupported(what, "is not supported on a symbolic tensor")

    def item(self):
        self._leave("Tensor.item")

    def tolist(self):
        self._leave("Tensor.tolist")

    def numpy(self, *args, **kwargs):
        self._leave("Tensor.numpy")

    def __bool__(self):
        self._leave("bool() (an if or while on tensor values)")

    def __float__(self):
        self._leave("float()")

    def __int__(self):
        self._leave("int()")

    def __index__(self):
        self._leave("using a tensor as an index")

    def __format__(self, spec):
        if not spec:
            return repr(self)
        self._leave("formatting tensor values")

    def __repr__(self) -> str:
        return f"SymTensor(shape={tuple(self.shape)}, dtype={self.dtype})"

    # -- operators: every one goes through the rule table
    def __add__(self, other):
        return apply("add", self, other, display="+")

    def __radd__(self, other):
        return apply("add", other, self, display="+")

    def __sub__(self, other):
        return apply("sub", self, other, display="-")

    def __rsub__(self, other):
        return apply("sub", other, self, display="-")

    def __mul__(self, other):
        return apply("mul", self, other, display="*")

    def __rmul__(self, other):
        return apply("mul", other, self, display="*")

    def __truediv__(self, other):
        return apply("div", self, other, display="/")

    def __rtruediv__(self, other):
        return apply("div", other, self, display="/")

    def __pow__(self, other):
        return apply("pow", self, other, display="**")

    def __rpow__(self, other):
        return apply("pow", other, self, display="**")

    def __matmul__(self, other):
        return apply("matmul", self, other, display="@")

    def __rmatmul__(self, other):
        return apply("matmul", other, self, display="@")

    def __neg__(self):
        return apply("neg", self, display="unary -")

    def __pos__(self):
        return apply("positive", self, display="unary +")

    def __abs__(self):
        return apply("abs", self, display="abs()")

    def __floordiv__(self, other):
        raise Unsupported("// (floor division)", "has no derivative")

    __rfloordiv__ = __mod__ = __rmod__ = __floordiv__

    def _compare(self, other):
        raise Unsupported("comparisons (<, >, ==) of symbolic values")

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _compare

    def __getitem__(self, index):
        return apply("getitem", self, index, display="indexing")

    def __setitem__(self, index, value):
        if self.input_name is not None:
            raise Unsupported(f"assigning into the input {self.input_name}")
        self.array = apply("setitem", self, index, value, display="indexed assignment").array

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        base = ALIASES.get(name, name)
        if base in RULES:
            return lambda *args, **kwargs: apply(base, self, *args, display=f"Tensor.{name}",
                                                 **kwargs)
        stem = ALIASES.get(name[:-1], name[:-1])
        if name.endswith("_") and stem in RULES:
            return lambda *args, **kwargs: self._in_place(stem, name, args, kwargs)
        if name == "zero_":
            return lambda: self._in_place("zeros_like", name, (), {})
        raise UnsupportedAttribute(f"Tensor.{name}")

    def _in_place(self, stem: str, name: str, args, kwargs):
        if self.input_name is not None:
            raise Unsupported(f"Tensor.{name} (in place) on the input {self.input_name}")
        result = apply(stem, self, *args, display=f"Tensor.{name}", **kwargs)
        self.array = np.broadcast_to(result.array, self.array.shape).copy()
        return self

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        display = qualified(func)
        if args and isinstance(args[0], torch.Tensor) and (
            name.startswith("i") and name[1:] in RULES or name == "setitem"
            or (name.endswith("_") and name not in _INPLACE_KEEP)
        ):
            raise Unsupported(f"writing symbolic values into a plain tensor ({display})")
        name, args = unreflect(name, args)
        return apply(name, *args, display=display, **kwargs)
