"""The Dask engine: train and score from Parquet on a Dask cluster, with the pandas engine's code.

The data are split into client partitions (every row of a client, in both tables, lands in the
same partition: the partition is a hash of ``client_id``). Each partition is validated with
:func:`features.validation.validate_and_normalise`, turned into landmark rows with
:func:`training.landmarks.landmark_set` (the same feature functions as the pandas engine), or
scored with :func:`training.scoring.score_tables` (the one scorer). The booster is fitted with
``xgboost.dask`` on the workers, one thread each, with the search of
:func:`models.booster.fit_booster` (same trials, same choice rule).

What the driver gathers (and nothing else):

* ``client_id``, ``intake_date`` and ``outcome`` of every client (to draw the splits with
  :func:`training.splits.split_clients`, exactly as the pandas engine does);
* each client's last appointment date, for the censoring weights (``--censoring ipcw``, the
  default), computed there by the pandas engine's :func:`training.censoring.censoring_weights`
  and joined onto the workers' landmark rows (:mod:`training.dask_engine.crossfit`);
* one 64-bit hash per row of both tables (the dataset fingerprint, equal to the pandas
  engine's);
* the out-of-fold margins (with label, weight and landmark) of the train and validation
  clients' landmark rows, from the cross-fit refitted through ``xgboost.dask`` in the pandas
  engine's client folds (at most :data:`CROSSFIT_CLIENT_CAP` clients);
* the baselines' input columns of the train split's landmark rows (a few columns);
* the validated rows of the calibration and test clients (and the ongoing clients of the
  test intakes, whose follow-up weights the test metrics): at most
  :data:`HELD_OUT_CLIENT_CAP` clients of each split (above it, a deterministic sample of whole
  clients, :func:`sample_clients`), and at most :data:`GATHER_LIMIT_SESSIONS` session rows.
  Calibration, risk bands, the reference profile and the test evaluation then run on them
  through :func:`training.pipeline.finish_training`, the pandas engine's code, the
  calibrator on the out-of-fold margins plus the calibration split's. The reference
  profile (feature distributions and typical levels) thus comes from the gathered calibration
  clients only (the pandas engine also uses train and validation clients); its ``rows`` text
  says so.
"""

from training.dask_engine.crossfit import CROSSFIT_CLIENT_CAP, cross_fit_dask
from training.dask_engine.partitions import (
    DEFAULT_WORKERS,
    CheckedPart,
    check_partitions,
    client_partitions,
    dask_client,
)
from training.dask_engine.rows import (
    FIT_SPLITS,
    LABEL,
    SPLIT,
    FitFrames,
    fit_frames,
    landmark_frame,
    partition_landmarks,
    partition_matrices,
    sample_clients,
)
from training.dask_engine.score import DaskScores, score_dask
from training.dask_engine.train import (
    GATHER_LIMIT_SESSIONS,
    GATHERED,
    HELD_OUT_CLIENT_CAP,
    DaskFit,
    DaskTrained,
    fit_booster_dask,
    fit_dask,
    train_dask,
)

__all__ = [
    "CROSSFIT_CLIENT_CAP", "DEFAULT_WORKERS", "FIT_SPLITS", "GATHERED", "GATHER_LIMIT_SESSIONS",
    "HELD_OUT_CLIENT_CAP", "LABEL", "SPLIT", "CheckedPart", "DaskFit", "DaskScores",
    "DaskTrained", "FitFrames", "check_partitions", "client_partitions", "cross_fit_dask",
    "dask_client", "fit_booster_dask", "fit_dask", "fit_frames", "landmark_frame",
    "partition_landmarks", "partition_matrices", "sample_clients", "score_dask", "train_dask",
]  # fmt: skip
