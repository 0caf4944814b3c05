"""The data contract: column names and allowed codes of the ``sessions`` and ``clients`` tables.

``docs/data-contract.md`` is the prose version. Validation of frames against this contract
lives in :mod:`features.validation`, so the CLI, training and the API share one wording.
"""

from __future__ import annotations

from typing import Final

CLIENT_ID: Final = "client_id"
CLINIC_ID: Final = "clinic_id"
THERAPIST_ID: Final = "therapist_id"
SESSION_NUMBER: Final = "session_number"
SESSION_DATE: Final = "session_date"
ATTENDANCE: Final = "attendance"
INTAKE_DATE: Final = "intake_date"
OUTCOME: Final = "outcome"
AGE: Final = "age"
GENDER: Final = "gender"
REFERRAL_SOURCE: Final = "referral_source"

#: Attendance codes, in the order used for feature columns.
ATTENDED: Final = "attended"
NO_SHOW: Final = "no_show"
LATE_CANCEL: Final = "late_cancel"
CANCELLED: Final = "cancelled"
RESCHEDULED: Final = "rescheduled"
ATTENDANCE_CODES: Final = (ATTENDED, NO_SHOW, LATE_CANCEL, CANCELLED, RESCHEDULED)
#: Appointments that were scheduled and did not happen, from the client's side.
MISSED_CODES: Final = (NO_SHOW, LATE_CANCEL)

COMPLETED: Final = "completed"
DROPOUT: Final = "dropout"
ONGOING: Final = "ongoing"
OUTCOME_CODES: Final = (COMPLETED, DROPOUT, ONGOING)

#: Largest accepted ``session_number``; far beyond any episode (weekly for 190 years), it
#: only keeps absurd values out of int64 arithmetic.
SESSION_NUMBER_MAX: Final = 10_000
#: Accepted ``age`` range in whole years, inclusive.
AGE_MIN: Final = 0
AGE_MAX: Final = 120

#: Required session columns besides the profile's ``alliance_<element>`` rating columns.
SESSION_COLUMNS: Final = (
    CLIENT_ID,
    CLINIC_ID,
    THERAPIST_ID,
    SESSION_NUMBER,
    SESSION_DATE,
    ATTENDANCE,
)
CLIENT_REQUIRED_COLUMNS: Final = (CLIENT_ID, CLINIC_ID, THERAPIST_ID, INTAKE_DATE, OUTCOME)
CLIENT_OPTIONAL_COLUMNS: Final = (AGE, GENDER, REFERRAL_SOURCE)
