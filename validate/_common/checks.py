"""Checks of the values a configuration or an API function is given, one rule each, the same everywhere.

Each check returns the value as a plain Python value (NumPy scalars such as np.int64(8) or np.float32(0.5) are
accepted where Python numbers are and come back as int or float, so that a config's JSON, equality and sweep
identity do not depend on where a number came from), or raises ValueError naming the input, the value and what is
allowed. Bools are not numbers here. A frozen config dataclass checks its fields in __post_init__ with ``field``:

    field(self, "width", integer, 1)          # self.width checked and stored back as an int
    real("lr", lr, 0, above=True)             # a finite float > 0
"""
from __future__ import annotations

import math
import numbers
import re

import numpy as np

SEED_LIMIT = 2 ** 63  # seeds seed torch.Generator (int64) and are stored as SQLite INTEGERs


def field(config, name: str, check, *args, **kwargs):
    """check(name, config.<name>, *args, **kwargs), stored back into the (frozen) dataclass; returns it."""
    value = check(name, getattr(config, name), *args, **kwargs)
    object.__setattr__(config, name, value)
    return value


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _bounds(minimum, maximum, above: bool = False, below: bool = False) -> str:
    """The allowed range as text; integers exactly (a seed limit is 9223372036854775807, not 9.22337e+18)."""
    def number(x):
        return str(x) if isinstance(x, int) else f"{x:g}"
    parts = ([f"{'>' if above else '>='} {number(minimum)}"] if minimum is not None else []) + \
            ([f"{'<' if below else '<='} {number(maximum)}"] if maximum is not None else [])
    return " and ".join(parts)


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None, why: str = "") -> int:
    """An integer (int or NumPy integer, not a bool) in [minimum, maximum]; `why` says where a bound comes from."""
    if not _is_integer(value) or (minimum is not None and value < minimum) \
            or (maximum is not None and value > maximum):
        bounds = _bounds(minimum, maximum)
        raise ValueError(f"{name}={value!r}: must be an integer" + (f" {bounds}" if bounds else "") + why)
    return int(value)


def real(name: str, value, minimum: float | None = None, maximum: float | None = None, *, above: bool = False,
         below: bool = False, why: str = "") -> float:
    """A finite real number (int, float or NumPy, not a bool) >= minimum (> with above=True) and <= maximum
    (< with below=True)."""
    number = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond the floats
            number = math.inf
    if not math.isfinite(number) \
            or (minimum is not None and (number <= minimum if above else number < minimum)) \
            or (maximum is not None and (number >= maximum if below else number > maximum)):
        bounds = _bounds(minimum, maximum, above, below)
        raise ValueError(f"{name}={value!r}: must be a finite number" + (f" {bounds}" if bounds else "") + why)
    return number


def fraction(name: str, value) -> float:
    """A fraction in (0, 1], e.g. the variance fraction q of r_q."""
    return real(name, value, 0.0, 1.0, above=True)


def choice(name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r}: allowed values are {', '.join(allowed)}")
    return value


def text(name: str, value, optional: bool = False):
    """A non-empty string (a path, an address), or None where optional."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}={value!r}: must be a non-empty string")
    return value


def sequence(name: str, values, check, *, distinct: bool = True, empty: bool = False) -> tuple:
    """A sequence (list, tuple, 1-D array) as a tuple, each element passed through check(f"{name}[i]", element)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name}={values!r}: must be a sequence")
    checked = tuple(check(f"{name}[{i}]", v) for i, v in enumerate(values))
    if not checked and not empty:
        raise ValueError(f"{name}=(): needs at least one value")
    if distinct and len(set(checked)) != len(checked):
        raise ValueError(f"{name}={checked}: values must be distinct")
    return checked


def pair(name: str, value, check) -> tuple:
    """Two values, each passed through check(name, element)."""
    checked = sequence(name, value, check, distinct=False, empty=True)
    if len(checked) != 2:
        raise ValueError(f"{name}={value!r}: must be two values")
    return checked


def seeds(name: str, values) -> tuple[int, ...]:
    """Distinct integer seeds in [0, 2^63), at least one."""
    return sequence(name, values, lambda label, v: integer(label, v, 0, SEED_LIMIT - 1))


def names(name: str, values, allowed) -> tuple[str, ...]:
    """Distinct names, each one of `allowed`, at least one (a single string counts as one name)."""
    return sequence(name, (values,) if isinstance(values, str) else values,
                    lambda label, v: choice(label, v, allowed))


def device(name: str, value) -> str:
    """cpu, cuda or cuda:N, the CUDA forms only where torch sees that device."""
    match = re.fullmatch(r"cuda(?::(\d+))?", value) if isinstance(value, str) else None
    if value == "cpu":
        return value
    if match is None:
        raise ValueError(f"{name}={value!r}: allowed values are cpu, cuda, cuda:N")
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(match.group(1) or 0) >= count:
        raise ValueError(f"{name}={value!r}: torch sees {count} CUDA device(s) on this machine"
                         + (f" (cuda:0 to cuda:{count - 1})" if count else " (use cpu)"))
    return value


def real_array(name: str, value) -> np.ndarray:
    """value as a float64 array with finite entries."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array of numbers ({error})") from None
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def binary_scale(array: np.ndarray) -> float:
    """2^e with max |array| / 2^e in [0.5, 1) (1.0 for an all-zero or empty array). Dividing by a power of two
    is exact, so a ratio of variances computed on the rescaled copy has the same bits, unless the original over-
    or underflows (which is why the copy is taken)."""
    largest = float(np.max(np.abs(array))) if array.size else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return 1.0
    return math.ldexp(1.0, math.frexp(largest)[1])


def shown(value, spec: str) -> str:
    """A number as text for a verdict table or a figure title: "n/a" when it is missing or not finite."""
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)
