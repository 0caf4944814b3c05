"""Pure feature library: DataFrames in, DataFrames out. No I/O and no imports of our other packages."""
