"""Type stub of the compiled feature kernel (features/_kernel.c); use features.kernels."""

from numpy import ndarray as Buffer

def fill(
    session_number: Buffer,
    day: Buffer,
    attendance: Buffer,
    ratings: Buffer,
    offsets: Buffer,
    intake_day: Buffer,
    age: Buffer,
    cutoffs: Buffer,
    params: Buffer,
    codes: Buffer,
    out_start: Buffer,
    out_rows: Buffer,
    src: Buffer,
    out_t: Buffer,
    n_elements: int,
    n_out: int,
    /,
) -> None: ...
def ratings(
    mappings: list[dict[str, float | None]],
    names: tuple[str, ...],
    out: Buffer,
    n_keys: Buffer,
    /,
) -> None: ...
def stat_keys() -> tuple[tuple[str, int], ...]: ...
