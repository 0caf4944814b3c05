"""Type stub of the compiled TreeSHAP rows (models/_treeshap.c); use models.treeshap."""

from numpy import ndarray as Buffer

class Tables:
    """A validated private copy of PathTables' arrays."""

    def __init__(
        self,
        split_feature: Buffer,
        split_threshold: Buffer,
        split_default_left: Buffer,
        entry_split: Buffer,
        entry_goes_right: Buffer,
        leaf_row: Buffer,
        value_order: Buffer,
        feature_start: Buffer,
        used_features: Buffer,
        table: Buffer,
        n_features: int,
        depth: int,
        /,
    ) -> None: ...
    def contributions(self, x: Buffer, out: Buffer, /) -> None: ...
