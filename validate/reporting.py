"""What a validate command writes, in one place: verdict rows and their table, package versions, JSON-safe
values, and files written atomically (a temporary file in the target directory, then a rename; mode 0644, since
mkstemp creates 0600). Used by every validate command."""
from __future__ import annotations

import os
import platform
import tempfile

import numpy as np

VERDICT_HEADERS = ("claim", "figure", "quantity", "prediction", "measurement", "tolerance", "verdict")


def verdict_row(claim, figure, quantity, prediction, measurement, tolerance, passed) -> dict:
    """One verdict row; figure is "paper" (the paper's own measure) or "null" (the null-corrected one);
    passed None (nothing to test) gives the verdict "n/a"."""
    verdict = "n/a" if passed is None else ("PASS" if passed else "FAIL")
    return {"claim": claim, "figure": figure, "quantity": quantity, "prediction": prediction,
            "measurement": measurement, "tolerance": tolerance, "verdict": verdict}


def format_table(rows) -> str:
    """The verdict rows as an aligned plain-text table."""
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in VERDICT_HEADERS]
    line = "  ".join(h.ljust(w) for h, w in zip(VERDICT_HEADERS, widths))
    return "\n".join([line, "-" * len(line)] + ["  ".join(str(r[h]).ljust(w) for h, w in zip(VERDICT_HEADERS, widths))
                                                for r in rows])


def package_versions() -> dict:
    import matplotlib
    import scipy
    import sympy
    import torch
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "sympy": sympy.__version__, "matplotlib": matplotlib.__version__}


def json_safe(value, nonfinite_as_none: bool = False):
    """value with NumPy scalars and arrays turned into Python ones (tuples into lists), so that json.dumps
    needs no `default` and a JSON round trip gives it back unchanged; nonfinite_as_none=True also turns NaN
    and inf into None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v, nonfinite_as_none) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, nonfinite_as_none) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist(), nonfinite_as_none)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if nonfinite_as_none and not np.isfinite(value) else value
    return value


def _atomic_replace(path: str, suffix: str, write) -> None:
    """write(temporary_path) into a temporary file beside `path`, then rename it over `path`."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_text(path: str, text: str) -> None:
    def write(temporary):
        with open(temporary, "w") as f:
            f.write(text)
    _atomic_replace(path, ".tmp", write)


def atomic_savez(path: str, arrays: dict) -> None:
    _atomic_replace(path, ".npz", lambda temporary: np.savez_compressed(temporary, **arrays))


def atomic_savefig(fig, path: str, **savefig_kwargs) -> None:
    """fig.savefig(path, format="png", **savefig_kwargs), atomically (the directory is created if needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_replace(path, ".png", lambda temporary: fig.savefig(temporary, format="png", **savefig_kwargs))


def save_figure(fig, out_dir: str, name: str, dpi: int = 110) -> str:
    """Save a Matplotlib figure as out_dir/name atomically, close it, return the path."""
    import matplotlib.pyplot as plt
    path = os.path.join(out_dir, name)
    try:
        atomic_savefig(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
