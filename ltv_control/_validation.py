"""The single validation gatekeeper of ltv-control.

Every public function sends its inputs through these helpers, so that shapes,
types and properties are checked once, in one way, with one style of message:
the message names the argument, what was expected and what was found.

Conventions (see ``shared/design/API.md``):

* A weight (``Q``, ``R``, ``N``, ``Qf``) is a Python scalar ``c`` (meaning
  ``c·I``), a constant matrix ``(d, e)``, a per-step stack ``(T, d, e)`` or a
  batched per-step stack ``(*batch, T, d, e)``. The number of dimensions decides,
  never the sizes: a 2-D array is always a constant matrix and a 3-D array is
  always a stack, so ``T == n`` is never ambiguous. A terminal weight has no time
  axis: ``(n, n)`` or ``(*batch, n, n)``.
* Symmetry is relative: ``‖M − Mᵀ‖_F ≤ 1e-8·‖M‖_F`` passes (and ``M`` is then
  symmetrised), a larger asymmetry raises :class:`PropertyError`. The test runs in the
  precision the weight is given in, before the cast to the compute dtype (for input below
  float64 the tolerance is ``max(1e-8, 10·eps)`` of that input's dtype).
* ``Q``/``Qf`` must be positive semidefinite (eigenvalues ≥ −tol·‖M‖_F, tested by
  a shifted Cholesky factorisation), ``R`` positive definite.
* Unknown keywords raise :class:`ArgumentError` (use :func:`public_api`).
"""

from __future__ import annotations

import functools
import inspect
import numbers
from typing import Any, Callable, NamedTuple, Sequence, TypeVar

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError, NumericalError, PropertyError
from ltv_control.backends import get_backend, is_torch_tensor

__all__ = [
    "SYMMETRY_RTOL",
    "public_api",
    "reject_unknown_kwargs",
    "require_system",
    "resolve_dtype",
    "as_array",
    "check_finite",
    "format_shape",
    "Weight",
    "as_weight",
    "as_terminal_weight",
    "as_vector_stack",
    "as_initial_state",
    "check_symmetric",
    "check_psd",
    "check_pd",
    "batch_member",
    "COMPUTE_DTYPES",
    "resolve_storage_dtype",
    "resolve_device",
    "all_finite",
    "convert_broadcast",
    "as_real",
    "as_int",
    "as_bool",
    "as_host_float64",
    "refuse_nonfinite_result",
]

SYMMETRY_RTOL = 1e-8
"""Relative symmetry tolerance: ``‖M − Mᵀ‖_F ≤ SYMMETRY_RTOL·‖M‖_F``."""

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------- keywords
def public_api(func: F) -> F:
    """Decorator: a call that does not fit ``func``'s signature raises :class:`ArgumentError`.

    Unknown keywords, missing required arguments and surplus positional
    arguments are reported with the function's name and its accepted keywords,
    before the function body runs. The wrapped function keeps its signature
    and docstring (``inspect.signature`` follows ``__wrapped__``).
    """
    signature = inspect.signature(func)
    names = [p.name for p in signature.parameters.values()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    qualname = func.__qualname__

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            unknown = sorted(set(kwargs) - set(names))
            if unknown:
                raise ArgumentError(
                    f"{qualname}() got unknown keyword argument(s) {', '.join(map(repr, unknown))}; "
                    f"accepted: {', '.join(n for n in names if n not in ('self', 'cls'))}"
                ) from None
            raise ArgumentError(f"{qualname}(): {exc}") from None
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def reject_unknown_kwargs(func_name: str, kwargs: dict, allowed: Sequence[str] = ()) -> None:
    """Raise :class:`ArgumentError` if ``kwargs`` holds a key outside ``allowed``.

    For functions that take ``**kwargs`` and forward only some of them.
    """
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ArgumentError(
            f"{func_name}() got unknown keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(allowed) if allowed else 'none'}"
        )


def require_system(system: Any, name: str = "system"):
    """Return ``system`` if it is an :class:`~ltv_control.LTVSystem`, else raise ArgumentError."""
    from ltv_control.system import LTVSystem

    if not isinstance(system, LTVSystem):
        raise ArgumentError(
            f"{name}: expected an ltv_control.LTVSystem, found {type(system).__name__}; "
            "build one with LTVSystem(A, B, c) or LTVSystem.constant(A, B, horizon)"
        )
    return system


# --------------------------------------------------------------------------- arrays
def format_shape(shape: Sequence[Any]) -> str:
    """``(3, 4)``-style rendering of a shape (symbols allowed)."""
    items = [str(s) for s in shape]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def batch_member(index: Sequence[int]) -> str:
    """Human rendering of a batch index (``""`` for an unbatched problem)."""
    index = tuple(int(i) for i in index)
    if not index:
        return "the (unbatched) problem"
    return f"batch member {index if len(index) > 1 else index[0]}"


COMPUTE_DTYPES = ("float32", "float64")
"""The dtypes the recursions compute in: the factorizations (LAPACK, torch.linalg) exist for these only."""

_STORAGE_DTYPES = ("float16", "bfloat16", "float32", "float64")
_BFLOAT16_FINFO = (2.0 ** -7, 3.3895313892515355e38)  # (eps, max) of bfloat16


def _dtype_name(dtype: Any) -> str:
    """``"float32"`` for ``np.float32``, ``torch.float32`` and ``"float32"`` alike."""
    if type(dtype).__module__.split(".")[0] == "torch":
        return str(dtype).replace("torch.", "")
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def _finfo(dtype: Any) -> tuple[float, float]:
    """``(eps, max)`` of a floating dtype (numpy or torch), without importing torch."""
    name = _dtype_name(dtype)
    if name == "bfloat16":
        return _BFLOAT16_FINFO
    info = np.finfo(np.dtype(name))
    return float(info.eps), float(info.max)


def resolve_dtype(dtype: Any, backend: Any, like: Any = None) -> Any:
    """The compute dtype for ``backend``: float64 unless ``dtype`` says otherwise.

    Only ``float32`` and ``float64`` are supported for the recursions (the Cholesky
    factorizations of numpy/SciPy and torch do not exist for half precisions), so
    ``float16``, ``bfloat16``, extended precision, integer and complex dtypes raise
    :class:`ArgumentError` naming the supported ones, also when the default would pick a
    half precision (torch tensors on devices without float64 default to their own dtype).
    """
    try:
        resolved = backend.resolve_dtype(dtype, like)
        name = _dtype_name(resolved)
    except (TypeError, ValueError, AttributeError):
        resolved, name = None, None
    if name not in COMPUTE_DTYPES:
        found = (repr(_dtype_name(dtype)) if dtype is not None
                 else f"the input's own dtype {name} (the default here)")
        raise ArgumentError(
            f"dtype: the recursion computes in float32 or float64 only; found {found}. "
            "float16 and bfloat16 (like integer, complex and extended-precision types) are not "
            "supported for the recursion: pass dtype='float32' or dtype='float64' (the system's "
            "matrices are cast)")
    return resolved


def resolve_storage_dtype(dtype: Any, backend: Any) -> Any:
    """A dtype the matrices of a system may be stored in (``LTVSystem.to``).

    Floating types only: ``float16``, ``float32``, ``float64`` and, for torch, ``bfloat16``.
    An integer, boolean or complex dtype would truncate the matrices and raises
    :class:`ArgumentError`; ``None`` is returned unchanged.
    """
    if dtype is None:
        return None
    expected = "a floating dtype (float16, float32, float64, or torch.bfloat16 for torch systems)"
    if isinstance(dtype, bool):
        raise ArgumentError(f"dtype: expected {expected}; found {dtype!r}")
    try:
        resolved = backend.resolve_dtype(dtype)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ArgumentError(f"dtype: expected {expected}; found {dtype!r} ({exc})") from None
    if _dtype_name(resolved) not in _STORAGE_DTYPES:
        raise ArgumentError(f"dtype: expected {expected}; found {_dtype_name(dtype)!r} (converting "
                            "to it would truncate or change the matrices)")
    return resolved


def resolve_device(device: Any, backend: Any) -> Any:
    """Check that ``device`` exists here and holds data; return it as the backend's device.

    A one-element probe array is allocated on it, so a missing accelerator (``"cuda"``
    without CUDA, ``"mps"`` off a Mac, an out-of-range ordinal) or an unknown name raises
    :class:`ArgumentError` naming the device; the ``"meta"`` device (shapes without values)
    is refused too, as nothing can be computed or checked on it.
    """
    if device is None:
        return None
    if isinstance(device, (bool, float)) or not (
            isinstance(device, (str, int)) or type(device).__module__.split(".")[0] == "torch"):
        raise ArgumentError(f"device: expected a device name such as 'cpu' or 'cuda:0' (or a "
                            f"torch.device), found {type(device).__name__}")
    try:
        probe = backend.zeros((1,), device=device)
    except Exception as exc:  # torch raises RuntimeError, AssertionError, ... per device kind
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArgumentError(f"device: {device!r} is not available here ({reason})") from None
    found = backend.device_of(probe)
    if getattr(found, "type", found) == "meta":
        raise ArgumentError(f"device: {device!r} holds shapes without values; choose a device with "
                            "memory ('cpu', 'cuda', 'mps', ...)")
    return found


def _is_scalar(x: Any) -> bool:
    """A real number: Python/numpy scalar or 0-d real array (not bool, not complex)."""
    return _real_scalar(x) is not None


def as_array(x: Any, name: str, backend: Any, *, dtype: Any = None, device: Any = None,
             finite: bool = True) -> Any:
    """Convert ``x`` to ``backend``'s array type, checking type and (optionally) finiteness.

    Parameters
    ----------
    x : array-like
        numpy array, torch tensor, nested list or scalar.
    name : str
        Argument name used in messages.
    backend : backend namespace
        Target backend (see :func:`ltv_control.backends.get_backend`).
    dtype : dtype, optional
        Target dtype; ``None`` keeps floating inputs as they are and converts
        integer/bool input to the backend's default float dtype.
    device : device, optional
        Target device (torch backend only).
    finite : bool
        Reject NaN/inf with :class:`PropertyError`.
    """
    if isinstance(x, (str, bytes, dict, set, bool, np.bool_)) or x is None:
        raise ArgumentError(f"{name}: expected an array or a real number, found {type(x).__name__}")
    if (is_torch_tensor(x) and x.device.type == "meta") or str(device) == "meta":
        raise ArgumentError(f"{name}: a tensor on the 'meta' device holds no values")
    if getattr(x, "ndim", None) == 0 and str(getattr(x, "dtype", "")) in ("bool", "torch.bool"):
        raise ArgumentError(f"{name}: expected an array or a real number, found a 0-d bool array")
    if not (isinstance(x, np.ndarray) or is_torch_tensor(x)):
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists etc.
            raise ArgumentError(f"{name}: cannot be converted to an array ({exc})") from None
        x = arr
    if isinstance(x, np.ndarray) and (x.dtype == object or x.dtype.kind in "USVMm"):
        raise ArgumentError(f"{name}: expected a numeric array, found {type(x).__name__} "
                            f"of dtype {x.dtype}")
    if np.iscomplexobj(x) if isinstance(x, np.ndarray) else (is_torch_tensor(x) and x.is_complex()):
        raise ArgumentError(f"{name}: complex values are not supported")
    if dtype is None and not (backend.is_array(x) and backend.is_floating(x)):
        floating = (isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)) or (
            is_torch_tensor(x) and x.is_floating_point())
        if not floating:
            dtype = backend.resolve_dtype(None, device)
    if finite and not all_finite(x, get_backend(x)):  # checked before any cast: no overflow yet
        raise PropertyError(f"{name}: contains NaN or inf values")
    if backend.name == "numpy" and is_torch_tensor(x) and x.requires_grad:
        raise ArgumentError(f"{name}: a torch tensor that requires grad was given to a numpy "
                            "problem; the result would be numpy with no gradient. Build the "
                            "LTVSystem from torch tensors to differentiate")
    with np.errstate(over="ignore"):  # an overflowing cast is reported below
        out = backend.asarray(x, dtype=dtype, device=device)
    if finite and out is not x and not all_finite(out, backend):
        raise PropertyError(f"{name}: contains values that overflow the dtype "
                            f"{_dtype_name(backend.dtype_of(out))}")
    return out


def check_finite(x: Any, name: str, backend: Any = None) -> None:
    """Raise :class:`PropertyError` if ``x`` holds NaN or inf."""
    backend = backend or get_backend(x)
    if not all_finite(x, backend):
        raise PropertyError(f"{name}: contains NaN or inf values")


def _compact(x: Any, backend: Any) -> Any:
    """``x`` without its broadcast axes (stride 0): one slice of each, a view, no allocation."""
    strides = x.strides if backend.name == "numpy" else x.stride()
    if 0 not in strides:
        return x
    return x[tuple(slice(0, 1) if st == 0 else slice(None) for st in strides)]


def convert_broadcast(x: Any, source: Any, target: Any, *, dtype: Any = None, device: Any = None) -> Any:
    """Convert ``x`` from backend ``source`` to ``target`` (dtype/device), keeping broadcast axes.

    Only the stored memory of a broadcast view (stride 0 axes) is converted, then broadcast
    again to ``x``'s shape, so converting ``LTVSystem.constant(A, B, 10**12)`` costs nothing.
    """
    with np.errstate(over="ignore"):  # an overflow is checked by the caller
        y = target.asarray(_compact(x, source), dtype=dtype, device=device)
    return y if tuple(y.shape) == tuple(x.shape) else target.broadcast_to(y, tuple(x.shape))


def all_finite(x: Any, backend: Any) -> bool:
    """Whether every element of ``x`` is finite, reading each stored element once.

    Broadcast views (``LTVSystem.constant``'s stacks, stride 0 along ``T``) are checked on
    their stored memory only, so the check never materialises the broadcast.
    """
    return bool(backend.all_finite(_compact(x, backend)))


# --------------------------------------------------------------------------- scalars
def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _real_scalar(value: Any) -> float | None:
    """``float(value)`` for a real (non-bool) number or 0-d real array, else ``None``."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if is_torch_tensor(value):
        if value.ndim != 0 or value.is_complex() or str(value.dtype) == "torch.bool" \
                or value.device.type == "meta":
            return None
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in "iuf":
            return None
        value = value.item()
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return float("inf") if value > 0 else float("-inf")


def _interval(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"


def as_real(value: Any, name: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, allow_inf: bool = False) -> float:
    """A real number ``value`` in the interval ``low … high``, as a Python float.

    A bool, string, complex number or array raises :class:`ArgumentError`; NaN, an
    infinity (unless ``allow_inf``) or a value outside the interval raises
    :class:`PropertyError`. Both messages name ``name``, the expected interval and the value.
    """
    v = _real_scalar(value)
    if v is None:
        raise ArgumentError(f"{name}: expected a real number, found {_describe(value)}")
    expected = f"a real number in {_interval(low, high, low_open, high_open)}"
    if np.isnan(v) or (np.isinf(v) and not allow_inf):
        raise PropertyError(f"{name}: expected {'a finite ' if not allow_inf else ''}{expected[2:]}, "
                            f"found {v}")
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if below or above:
        raise PropertyError(f"{name}: expected {expected}, found {v:g}")
    return v


def as_int(value: Any, name: str, *, low: int | None = None, high: int | None = None,
           error: type = PropertyError) -> int:
    """An integer ``value`` (Python or numpy int, not bool) with ``low <= value <= high``.

    A non-integer raises :class:`ArgumentError`; a value out of range raises ``error``
    (:class:`PropertyError` by default, :class:`DimensionError` for sizes).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{name}: expected an int, found {_describe(value)}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        bounds = (f"{low} <= {name} <= {high}" if low is not None and high is not None else
                  f"{name} >= {low}" if low is not None else f"{name} <= {high}")
        raise error(f"{name}: expected {bounds}, found {v}")
    return v


def as_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (Python or numpy), else :class:`ArgumentError`."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentError(f"{name}: expected True or False, found {_describe(value)}")
    return bool(value)


def as_host_float64(x: Any, name: str, *, finite: bool = True) -> np.ndarray:
    """Convert a numpy array, torch tensor, nested list or number to a float64 numpy array.

    The strict host converter of the numpy-only modules (bounds, plants, plots): strings,
    ``None``, bools, complex values (which a float cast would silently truncate to their real
    part), object arrays and meta tensors raise :class:`ArgumentError`; NaN/inf raise
    :class:`PropertyError` when ``finite``. Integer and boolean *arrays* are converted.
    """
    if isinstance(x, (str, bytes, dict, set, bool, np.bool_)) or x is None:
        raise ArgumentError(f"{name}: expected a numeric array, found {type(x).__name__}")
    if is_torch_tensor(x):
        if x.is_complex():
            raise ArgumentError(f"{name}: complex values are not supported (found {x.dtype})")
        if x.device.type == "meta":
            raise ArgumentError(f"{name}: a tensor on the 'meta' device holds no values")
        x = get_backend(x).to_numpy(x)
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged nested lists, objects that refuse conversion
        raise ArgumentError(f"{name}: cannot be converted to a numeric array ({exc})") from None
    if arr.dtype.kind == "c":
        raise ArgumentError(f"{name}: complex values are not supported (found {arr.dtype})")
    if arr.dtype.kind not in "biuf":
        raise ArgumentError(f"{name}: expected a numeric array, found {type(x).__name__} of "
                            f"dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if finite and not all_finite(arr, get_backend(arr)):
        raise PropertyError(f"{name}: contains NaN or inf values")
    return arr


def refuse_nonfinite_result(x: Any, what: str, backend: Any, *, item_ndim: int = 1,
                            per_step: bool = True, step_offset: int = 0, hint: str = "") -> None:
    """Raise :class:`NumericalError` if a result computed from finite input holds NaN or inf.

    ``x`` has shape ``(*batch, T, *item)`` (``per_step``) or ``(*batch, *item)`` with
    ``len(item) == item_ndim``; the message names ``what``, the first step whose item is not
    finite (``index + step_offset``) and the first batch member there. One device
    synchronisation on success; the location is computed only on the error path.
    """
    if all_finite(x, backend):
        return
    bad = ~np.asarray(backend.to_host(backend.isfinite(x)), dtype=bool)
    if item_ndim:
        bad = bad.reshape(bad.shape[:bad.ndim - item_ndim] + (-1,)).any(axis=-1)
    where = ""
    if per_step and bad.ndim:
        step = int(np.argmax(bad.reshape(-1, bad.shape[-1]).any(axis=0)))
        member = tuple(int(i) for i in np.argwhere(bad[..., step])[0]) if bad.ndim > 1 else ()
        where = f" at step {step + step_offset}" + (f", {batch_member(member)}" if member else "")
    elif bad.ndim:
        where = f" at {batch_member(_first_bad(bad))}"
    raise NumericalError(f"{what} overflowed to inf/NaN from finite input{where}{hint}")


# --------------------------------------------------------------------------- properties
def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _where(index: tuple[int, ...], per_step: bool, step_offset: int = 0) -> str:
    """Render the location of a failing matrix in a (*batch[, T]) stack."""
    if per_step and index:
        step = index[-1] + step_offset
        batch = index[:-1]
        return f" at step {step}" + (f", {batch_member(batch)}" if batch else "")
    if index:
        return f" at {batch_member(index)}"
    return ""


def _is_repeated_view(M: Any, backend: Any) -> bool:
    """Whether ``M`` (…, T, d, e) is a broadcast view with stride 0 along T (check one slice)."""
    if M.ndim < 3:
        return False
    if backend.name == "numpy":
        return M.strides[-3] == 0 and M.ndim == 3
    return M.stride(-3) == 0 and M.ndim == 3


def check_symmetric(M: Any, name: str, backend: Any, *, per_step: bool = False) -> Any:
    """Check ``‖M − Mᵀ‖_F ≤ rtol·‖M‖_F`` for every matrix in ``M``; return ``(M + Mᵀ)/2``.

    ``rtol = max(1e-8, 10·eps)`` with ``eps`` the machine epsilon of ``M``'s dtype: exactly
    ``1e-8`` for float64 input, and no tighter than the rounding of a lower-precision input
    (a float32 matrix cannot be symmetric to better than about ``eps_32 ≈ 1.2e-7``). Call it
    on the matrix as given, before any cast to a lower compute precision.

    Raises
    ------
    PropertyError
        Naming the argument, the relative asymmetry found and where (step, batch member).
    """
    if M.shape[-1] != M.shape[-2]:
        raise DimensionError(f"{name}: expected square matrices, found shape {format_shape(M.shape)}")
    rtol = max(SYMMETRY_RTOL, 10.0 * _eps(M, backend))
    MT = backend.mT(M)
    asym = backend.to_host(backend.frobenius(M - MT))
    scale = backend.to_host(backend.frobenius(M))
    bad = asym > rtol * scale
    if np.any(bad):
        idx = _first_bad(np.atleast_1d(bad)) if bad.ndim else ()
        rel = float(np.atleast_1d(asym / np.where(scale > 0, scale, 1.0))[idx if idx else 0])
        raise PropertyError(
            f"{name}: expected a symmetric matrix (‖M − Mᵀ‖_F ≤ {rtol:g}·‖M‖_F), "
            f"found relative asymmetry {rel:.3g}{_where(idx, per_step)}"
        )
    return 0.5 * (M + MT)


def _to_compute_dtype(M: Any, name: str, backend: Any, dtype: Any) -> Any:
    """Cast a validated weight to the compute dtype (refusing values that overflow it)."""
    if dtype is None or backend.dtype_of(M) == dtype:
        return M
    with np.errstate(over="ignore"):  # an overflow is reported below, not warned about
        M = backend.astype(M, dtype)
    if not backend.all_finite(M):
        raise PropertyError(f"{name}: contains values that overflow the compute dtype {dtype}")
    return M


def _eps(M: Any, backend: Any) -> float:
    return _finfo(backend.dtype_of(M))[0]


def check_psd(M: Any, name: str, backend: Any, *, per_step: bool = False) -> None:
    """Check that every (symmetric) matrix in ``M`` is positive semidefinite.

    Test: the Cholesky factorisation of ``M + δ·I`` with
    ``δ = tol·‖M‖_F``, ``tol = max(1e-10, 10·n·eps)``, succeeds, i.e.
    ``λ_min(M) ≳ −tol·‖M‖_F``. Zero matrices pass.
    """
    if _is_repeated_view(M, backend):
        return check_psd(M[..., :1, :, :], name, backend, per_step=per_step)
    n = M.shape[-1]
    tol = max(1e-10, 10.0 * n * _eps(M, backend))
    scale = backend.frobenius(M)
    shift = tol * scale + 1e-300 if backend.name == "numpy" else tol * scale + 1e-30
    eye = backend.eye(n, dtype=backend.dtype_of(M), device=backend.device_of(M))
    shifted = M + shift[..., None, None] * eye
    _, info = backend.cholesky(shifted)
    _refuse_failed_cholesky(M, info, name, "positive semidefinite", backend, per_step)


def check_pd(M: Any, name: str, backend: Any, *, per_step: bool = False) -> None:
    """Check that every (symmetric) matrix in ``M`` is positive definite (Cholesky succeeds)."""
    if _is_repeated_view(M, backend):
        return check_pd(M[..., :1, :, :], name, backend, per_step=per_step)
    _, info = backend.cholesky(M)
    _refuse_failed_cholesky(M, info, name, "positive definite", backend, per_step)


def _refuse_failed_cholesky(M: Any, info: Any, name: str, expected: str, backend: Any,
                            per_step: bool) -> None:
    """Raise PropertyError naming the first member whose Cholesky ``info`` flags a failure,
    with its smallest eigenvalue (computed only on this error path)."""
    info = np.asarray(info)
    if not np.any(info):
        return
    idx = _first_bad(np.atleast_1d(info != 0)) if info.ndim else ()
    member = M[idx] if idx else M
    lam = float(np.min(np.linalg.eigvalsh(backend.to_host(member).astype(np.float64))))
    raise PropertyError(
        f"{name}: expected a {expected} matrix, found smallest eigenvalue "
        f"{lam:.3g}{_where(idx, per_step)}"
    )


# --------------------------------------------------------------------------- weights
class Weight(NamedTuple):
    """A validated stage weight.

    Attributes
    ----------
    value : array
        ``(*wbatch, d, e)`` when constant, ``(*wbatch, T, d, e)`` when per step.
    per_step : bool
        Whether ``value`` has a time axis.
    batch_shape : tuple
        The weight's own batch dimensions (broadcast against the system's).
    """

    value: Any
    per_step: bool
    batch_shape: tuple

    def at(self, k: int) -> Any:
        """The weight of step ``k`` (shape ``(*wbatch, d, e)``)."""
        return self.value[..., k, :, :] if self.per_step else self.value

    def last(self) -> Any:
        """The weight of the last step (``Qf=None`` default for Q)."""
        return self.value[..., -1, :, :] if self.per_step else self.value


def _scalar_value(x: Any) -> float:
    try:
        return float(x.item()) if hasattr(x, "item") else float(x)
    except OverflowError:  # a Python int beyond the float range
        return float("inf")


def as_weight(value: Any, name: str, *, rows: int, cols: int | None = None, horizon: int,
              backend: Any, dtype: Any, device: Any = None, definiteness: str | None = "psd",
              batch_shape: Sequence[int] = ()) -> Weight:
    """Normalise a stage weight to a :class:`Weight`.

    Parameters
    ----------
    value : float, array (d, e), array (T, d, e) or array (*batch, T, d, e)
        A Python/0-d scalar ``c`` means ``c·I`` (requires ``d == e``).
    name : str
        Argument name for messages (``"Q"``, ``"R"``, ``"N"``, ...).
    rows, cols : int
        Expected matrix size ``(d, e)``; ``cols=None`` means square.
    horizon : int
        Expected stack length ``T``.
    backend, dtype, device
        Target array backend, compute dtype and device.
    definiteness : {"psd", "pd", None}
        Property required of every matrix; symmetric weights are symmetrised.
        ``None`` (for the cross term ``N``) skips symmetry and definiteness.
    batch_shape : tuple
        The system's batch shape; the weight's batch dimensions must broadcast with it.

    Returns
    -------
    Weight
    """
    square = cols is None
    cols = rows if cols is None else cols
    if _is_scalar(value):
        c = _scalar_value(value)
        if not np.isfinite(c):
            raise PropertyError(f"{name}: contains NaN or inf values (scalar {c})")
        if not square and rows != cols:
            raise DimensionError(
                f"{name}: a scalar means c·I and needs a square ({rows}, {cols}) weight; "
                f"pass a ({rows}, {cols}) matrix instead")
        if definiteness == "psd" and c < 0:
            raise PropertyError(f"{name}: expected a positive semidefinite weight, found scalar {c:g} < 0")
        if definiteness == "pd" and c <= 0:
            raise PropertyError(f"{name}: expected a positive definite weight, found scalar {c:g} <= 0")
        if dtype is not None and abs(c) > _finfo(dtype)[1]:
            raise PropertyError(f"{name}: scalar {c:g} overflows the compute dtype {_dtype_name(dtype)}")
        M = c * backend.eye(rows, dtype=dtype, device=device)
        return Weight(M, False, ())
    # Validated in the precision given (the symmetry test must not see the rounding of a
    # cast to a lower compute precision), then cast to the compute dtype.
    M = as_array(value, name, backend, device=device)
    expected = (f"a scalar, a constant matrix {format_shape((rows, cols))}, a per-step stack "
                f"{format_shape((horizon, rows, cols))} or a batched stack "
                f"{format_shape(('*batch', horizon, rows, cols))}")
    if M.ndim < 2 or tuple(M.shape[-2:]) != (rows, cols):
        raise DimensionError(f"{name}: expected {expected}; found shape {format_shape(M.shape)}")
    per_step = M.ndim >= 3
    wbatch: tuple = ()
    if per_step:
        if M.shape[-3] != horizon:
            raise DimensionError(
                f"{name}: expected {expected}; found shape {format_shape(M.shape)} "
                f"(a 3-D weight is a per-step stack, and its length {M.shape[-3]} != T = {horizon})"
                + ("; the terminal weight is passed separately as Qf" if M.shape[-3] == horizon + 1
                   else ""))
        wbatch = tuple(M.shape[:-3])
        try:
            backend.broadcast_shapes(wbatch, tuple(batch_shape))
        except (ValueError, RuntimeError):
            raise DimensionError(
                f"{name}: batch dimensions {format_shape(wbatch)} do not broadcast with the "
                f"system's batch shape {format_shape(tuple(batch_shape))}") from None
    if definiteness is not None:
        M = check_symmetric(M, name, backend, per_step=per_step)
    M = _to_compute_dtype(M, name, backend, dtype)
    if definiteness is not None:
        if definiteness == "psd":
            check_psd(M, name, backend, per_step=per_step)
        elif definiteness == "pd":
            check_pd(M, name, backend, per_step=per_step)
    return Weight(M, per_step, wbatch)


def as_terminal_weight(value: Any, name: str, *, n: int, backend: Any, dtype: Any,
                       device: Any = None, batch_shape: Sequence[int] = ()) -> Any:
    """Normalise a terminal weight: scalar ``c`` (``c·I``), ``(n, n)`` or ``(*batch, n, n)``.

    Symmetrised and checked positive semidefinite. Returns the array.
    """
    if _is_scalar(value):
        return as_weight(value, name, rows=n, horizon=1, backend=backend, dtype=dtype,
                         device=device, definiteness="psd").value
    M = as_array(value, name, backend, device=device)
    if M.ndim < 2 or tuple(M.shape[-2:]) != (n, n):
        raise DimensionError(f"{name}: expected a scalar, a matrix ({n}, {n}) or a batched "
                             f"(*batch, {n}, {n}); found shape {format_shape(M.shape)}")
    _check_batch_broadcast(name, M.shape[:-2], batch_shape, backend)
    M = _to_compute_dtype(check_symmetric(M, name, backend), name, backend, dtype)
    check_psd(M, name, backend)
    return M


def _check_batch_broadcast(name: str, found: Sequence[int], batch_shape: Sequence[int],
                           backend: Any) -> None:
    """Refuse batch dimensions ``found`` of ``name`` that do not broadcast with the system's."""
    try:
        backend.broadcast_shapes(tuple(found), tuple(batch_shape))
    except (ValueError, RuntimeError):
        raise DimensionError(f"{name}: batch dimensions {format_shape(tuple(found))} do not "
                             f"broadcast with the system's batch shape "
                             f"{format_shape(tuple(batch_shape))}") from None


# --------------------------------------------------------------------------- vectors
def as_vector_stack(value: Any, name: str, *, length: int, dim: int, backend: Any, dtype: Any,
                    device: Any = None, allow_constant: bool = True,
                    batch_shape: Sequence[int] | None = None, length_name: str = "T") -> Any:
    """Normalise a trajectory-like argument to ``(*batch, length, dim)``.

    ``(dim,)`` is a constant broadcast over time when ``allow_constant`` (a 1-D array
    is never read as a trajectory); ``(length, dim)`` and ``(*batch, length, dim)``
    are taken as given.
    """
    V = as_array(value, name, backend, dtype=dtype, device=device)
    forms = f"({length_name}={length}, {dim}) or (*batch, {length}, {dim})"
    if allow_constant:
        forms = f"a constant ({dim},), " + forms
    if V.ndim == 1 and allow_constant:
        if V.shape[0] != dim:
            raise DimensionError(f"{name}: expected {forms}; found shape {format_shape(V.shape)}")
        return backend.broadcast_to(V, (length, dim))
    if V.ndim < 2 or tuple(V.shape[-2:]) != (length, dim):
        raise DimensionError(f"{name}: expected {forms}; found shape {format_shape(V.shape)}")
    if batch_shape is not None:
        _check_batch_broadcast(name, V.shape[:-2], batch_shape, backend)
    return V


def as_initial_state(value: Any, name: str, *, n: int, backend: Any, dtype: Any,
                     device: Any = None, batch_shape: Sequence[int] = ()) -> Any:
    """Normalise an initial state to ``(*batch, n)`` (batch broadcast with the system's)."""
    x0 = as_array(value, name, backend, dtype=dtype, device=device)
    if x0.ndim < 1 or x0.shape[-1] != n:
        raise DimensionError(f"{name}: expected ({n},) or (*batch, {n}); found shape "
                             f"{format_shape(x0.shape)}")
    _check_batch_broadcast(name, x0.shape[:-1], batch_shape, backend)
    return x0


# --------------------------------------------------------------------------- systems
def as_system_arrays(A: Any, B: Any = None, c: Any = None) -> tuple:
    """Validate the matrices of an LTV system ``x_{k+1} = A_k x_k + B_k u_k + c_k``.

    Parameters
    ----------
    A : array (*batch, T, n, n)
        A per-step stack; a single ``(n, n)`` matrix is refused (use
        ``LTVSystem.constant``), so ``T == n`` is never guessed.
    B : array (*batch, T, n, m) or None
        ``None`` means ``B_k = I``.
    c : array (*batch, T, n) or None
        Affine drift; ``None`` means none.

    Returns
    -------
    (A, B, c, backend, batch_shape)
        Arrays in one backend (torch when any input is a tensor; numpy inputs then
        follow ``A``'s device), floating dtypes kept, integers converted to float64.
    """
    backend = get_backend(A, B, c)
    device = None
    for x in (A, B, c):
        if backend.is_array(x) and backend.name == "torch":
            device = x.device
            break
    A = as_array(A, "A", backend, device=device)
    if A.ndim < 3:
        raise DimensionError(
            f"A: expected a per-step stack (*batch, T, n, n); found shape {format_shape(A.shape)}. "
            "For a time-invariant model use LTVSystem.constant(A, B, horizon)")
    if A.shape[-1] != A.shape[-2]:
        raise DimensionError(f"A: expected square matrices (*batch, T, n, n); found shape "
                             f"{format_shape(A.shape)}")
    T, n = A.shape[-3], A.shape[-1]
    if T < 1 or n < 1:
        raise DimensionError(f"A: expected T >= 1 and n >= 1; found shape {format_shape(A.shape)}")
    batch = tuple(A.shape[:-3])
    if B is not None:
        B = as_array(B, "B", backend, device=device)
        if B.ndim < 3 or B.shape[-3] != T or B.shape[-2] != n:
            hint = (". For a time-invariant model use LTVSystem.constant(A, B, horizon)"
                    if B.ndim == 2 else "")
            raise DimensionError(f"B: expected a per-step stack (*batch, T={T}, n={n}, m); found "
                                 f"shape {format_shape(B.shape)}{hint}")
        if B.shape[-1] < 1:
            raise DimensionError(f"B: expected m >= 1 inputs; found shape {format_shape(B.shape)}")
        try:
            batch = backend.broadcast_shapes(batch, tuple(B.shape[:-3]))
        except (ValueError, RuntimeError):
            raise DimensionError(f"B: batch dimensions {format_shape(B.shape[:-3])} do not "
                                 f"broadcast with A's {format_shape(A.shape[:-3])}") from None
    if c is not None:
        c = as_array(c, "c", backend, device=device)
        if c.ndim < 2 or tuple(c.shape[-2:]) != (T, n):
            raise DimensionError(f"c: expected a per-step drift (*batch, T={T}, n={n}); found "
                                 f"shape {format_shape(c.shape)}")
        try:
            batch = backend.broadcast_shapes(batch, tuple(c.shape[:-2]))
        except (ValueError, RuntimeError):
            raise DimensionError(f"c: batch dimensions {format_shape(c.shape[:-2])} do not "
                                 f"broadcast with the system's {format_shape(batch)}") from None
    return A, B, c, backend, tuple(batch)
