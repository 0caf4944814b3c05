/* The feature kernel: every landmark feature as an expanding, per-client statistic.
 *
 * One pass over each client's rows (sorted by session number) carries a few running values per
 * rating group and per attendance code; the statistics at each row depend only on the rows at or
 * before it in the same client, which makes them leakage-free by construction. A client's
 * features are therefore bit-identical whether it is computed alone (serving) or in a batch of
 * 100,000 (training): nothing crosses from one client to the next.
 *
 * Arithmetic follows the definitions in features/registry.py operation by operation, in a fixed
 * order, with IEEE doubles and no contraction into fused multiply-adds (setup: -ffp-contract=off),
 * so the results do not depend on the compiler's choices. Running sums start from the client's
 * first value (not 0.0 + value), as numpy's ``ufunc.accumulate`` does.
 *
 * Python side: features/kernels.py owns validation, the layout of output columns and the
 * documentation; this file owns the arithmetic and the table of statistics (``stat_keys``).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Above this many rows the GIL is released while computing (batch scoring in a thread pool);
 * below it the hand-off would cost more than the work (one client: ~12 rows). */
#define RELEASE_GIL_ROWS 4096

enum Kind { ONE = 0, PER_CODE = 1, PER_GROUP = 2 };

enum Stat {
    CODE_COUNT, CODE_RATE, CODE_LAST,
    NO_SHOW_FIRST3, GAP_MEAN, GAP_MAX, MISSED_STREAK, DAYS_SINCE_ATTENDED, NEVER_ATTENDED,
    LANDMARK, DAYS_SINCE_INTAKE, AGE, AGE_YOUNG,
    N_RATED, EARLY_MEAN, LAST, CHANGE_PREV, LAST3_MEAN, MIN, CHANGE_FIRST, DEV_OWN_MEAN, SLOPE,
    MSSD, SD, RUPTURES_1SD, RUPTURES_2SD, HAS_RUPTURE, UNREPAIRED, SINCE_RUPTURE, BELOW_CUTOFF,
    ANY_ELEMENT_BELOW, CEILING_STREAK, CEILING_FLAG, DROP_ALERT, NEVER_RATED, UNRATED_SHARE,
    N_STATS
};

/* Keys are those of FeatureRegistry.layout: per-code and per-group statistics by their short
 * key, every other feature by its full name. */
static const struct { const char *key; int kind; } STATS[N_STATS] = {
    {"attendance_count", PER_CODE}, {"attendance_rate", PER_CODE},
    {"attendance_last", PER_CODE},
    {"attendance_no_show_first3", ONE}, {"attendance_gap_mean_days", ONE},
    {"attendance_gap_max_days", ONE}, {"attendance_missed_streak", ONE},
    {"engagement_days_since_attended", ONE}, {"engagement_never_attended", ONE},
    {"engagement_landmark", ONE}, {"engagement_days_since_intake", ONE},
    {"client_age", ONE}, {"client_age_under_25", ONE},
    {"n_rated", PER_GROUP}, {"early_mean", PER_GROUP}, {"last", PER_GROUP},
    {"change_prev", PER_GROUP}, {"last3_mean", PER_GROUP}, {"min", PER_GROUP},
    {"change_first", PER_GROUP}, {"dev_own_mean", PER_GROUP}, {"slope", PER_GROUP},
    {"mssd", PER_GROUP}, {"sd", PER_GROUP}, {"ruptures_1sd", PER_GROUP},
    {"ruptures_2sd", PER_GROUP}, {"has_rupture", PER_GROUP}, {"unrepaired", PER_GROUP},
    {"sessions_since_rupture", PER_GROUP}, {"below_cutoff", PER_GROUP},
    {"alliance_overall_any_element_below_cutoff", ONE},
    {"alliance_overall_ceiling_streak", ONE}, {"alliance_overall_ceiling_flag", ONE},
    {"alliance_overall_drop_alert", ONE}, {"engagement_never_rated", ONE},
    {"engagement_unrated_share", ONE},
};

/* Scalar parameters, in the order of the ``params`` buffer. */
enum Param {
    P_EPS,            /* comparison tolerance: TOLERANCE_FRACTION * scale range */
    P_FLOOR,          /* rupture threshold floor: RUPTURE_FLOOR_FRACTION * scale range */
    P_MIN_HISTORY,    /* rated sessions before the own SD counts (RUPTURE_MIN_HISTORY) */
    P_ELEMENT_CUTOFF, /* element cut-off minus eps */
    P_CEILING,        /* scale maximum minus eps */
    P_DROP,           /* overall drop alert: drop points per element minus eps */
    P_YOUNG_AGE,      /* YOUNG_AGE_YEARS */
    N_PARAMS
};

/* Attendance code indices, in the order of the ``codes`` buffer. */
enum Code { C_N, C_ATTENDED, C_NO_SHOW, C_LATE_CANCEL, N_CODE_PARAMS };

/* Running values of one rating group (an element, or the element mean) inside one client. */
typedef struct {
    double m;          /* rated sessions so far */
    double early_sum;  /* sum and count of ratings at appointments 1-3 */
    double early_n;
    double last, prev, prev2; /* the last three rated values (valid as m allows) */
    double min;        /* fmin over the values so far (NaN before any) */
    double first;      /* first rated value (NaN before any) */
    double s1, s2, sty, ssd; /* sums of y, y^2, (m - 1) y and squared successive differences */
    double sd_last;    /* SD at the last rated row (NaN before any) */
    double n_rup, n_rup2;
    int64_t rup_pos;   /* 1-based row of the last rupture in the client, 0 = none */
    double rup_sn;     /* its session number */
    double rup_level;  /* the rated value before the rupture */
    int64_t back_pos;  /* last row whose value reached the level before the latest rupture */
} Group;

typedef struct {
    Py_ssize_t n, n_clients, n_el, n_out, n_cols;
    const int64_t *sn, *day, *offsets, *out_start, *out_rows, *src;
    const int8_t *att;
    const double *ratings, *intake, *age, *cutoffs, *params;
    int64_t n_codes, c_att, c_no_show, c_late;
    double *out_t;
    /* work space */
    Group *groups;
    double *counts, *values, *table;
    Py_ssize_t off[N_STATS];
} Kernel;

/* np.maximum(x, 0.0): NaN propagates. */
static inline double max0(double x) { return (x >= 0.0 || isnan(x)) ? x : 0.0; }

static inline double flag(int b) { return b ? 1.0 : 0.0; }

static void run(Kernel *k) {
    const Py_ssize_t G = k->n_el + 1, n_el = k->n_el, n = k->n;
    const double eps = k->params[P_EPS], floor_ = k->params[P_FLOOR];
    const double min_history = k->params[P_MIN_HISTORY];
    double *t = k->table;
    const Py_ssize_t *off = k->off;

    for (Py_ssize_t c = 0; c < k->n_clients; c++) {
        const int64_t a = k->offsets[c], b = k->offsets[c + 1];
        /* Running values of this client (the groups' are reset at its first row). */
        double gap_sum = 0.0, gap_max = NAN, no_show3 = 0.0;
        double not_missed_k = 0.0, attended_day = NAN;
        int attended_seen = 0;
        double lowest_at_last = NAN, not_ceiling_m = 0.0;
        double age = k->age[c];
        if (!isfinite(age)) age = NAN;
        t[off[AGE]] = age;
        t[off[AGE_YOUNG]] = isnan(age) ? NAN : flag(age < k->params[P_YOUNG_AGE]);
        const double intake = k->intake[c];

        for (int64_t i = a; i < b; i++) {
            const int first_row = (i == a);
            const double kk = (double)(i - a + 1); /* appointments so far */
            const int code = k->att[i];
            const double dsn = (double)k->sn[i], dday = (double)k->day[i];
            const int first3 = k->sn[i] <= 3;
            const int attended = code == k->c_att;

            /* ---- attendance ---- */
            for (int64_t cc = 0; cc < k->n_codes; cc++) {
                const double hit = flag(cc == code);
                k->counts[cc] = first_row ? hit : k->counts[cc] + hit;
                t[off[CODE_COUNT] + cc] = k->counts[cc];
                t[off[CODE_RATE] + cc] = k->counts[cc] / kk;
                t[off[CODE_LAST] + cc] = hit;
            }
            const double ns3 = flag(code == k->c_no_show && first3);
            no_show3 = first_row ? ns3 : no_show3 + ns3;
            t[off[NO_SHOW_FIRST3]] = no_show3;
            const double gap = first_row ? 0.0 : dday - (double)k->day[i - 1];
            gap_sum = first_row ? gap : gap_sum + gap;
            t[off[GAP_MEAN]] = gap_sum / (kk - 1.0);
            gap_max = first_row ? NAN : fmax(gap_max, gap);
            t[off[GAP_MAX]] = gap_max;
            if (code != k->c_no_show && code != k->c_late) not_missed_k = kk;
            t[off[MISSED_STREAK]] = kk - not_missed_k;
            if (attended) { attended_day = dday; attended_seen = 1; }
            t[off[DAYS_SINCE_ATTENDED]] = dday - attended_day;
            t[off[NEVER_ATTENDED]] = flag(!attended_seen);
            t[off[LANDMARK]] = dsn;
            t[off[DAYS_SINCE_INTAKE]] = dday - intake;

            /* ---- the session's ratings: elements, their mean, the lowest element ---- */
            double total = 0.0, n_rated_el = 0.0, lowest = NAN;
            for (Py_ssize_t e = 0; e < n_el; e++) {
                const double r = k->ratings[e * n + i];
                const int rated = attended && isfinite(r); /* inf counts as not rated */
                const double v = rated ? r : NAN;
                k->values[e] = v;
                const double z = rated ? r : 0.0;
                total = e == 0 ? z : total + z;
                n_rated_el = e == 0 ? flag(rated) : n_rated_el + flag(rated);
                lowest = e == 0 ? v : fmin(lowest, v);
            }
            k->values[n_el] = total / n_rated_el; /* NaN when none rated */

            for (Py_ssize_t g = 0; g < G; g++) {
                Group *s = &k->groups[g];
                const double v = k->values[g];
                const int rated = g < n_el ? !isnan(v) : n_rated_el > 0.0;
                const double r1 = flag(rated);
                const int early = rated && first3;
                const double early_v = early ? v : 0.0;
                if (first_row) {
                    s->m = r1; s->early_sum = early_v; s->early_n = flag(early);
                    s->last = s->prev = s->prev2 = NAN; s->min = v;
                    s->first = NAN; s->sd_last = NAN;
                    s->rup_pos = 0; s->rup_sn = NAN; s->rup_level = NAN; s->back_pos = 0;
                } else {
                    s->m += r1; s->early_sum += early_v; s->early_n += flag(early);
                    s->min = fmin(s->min, v);
                }
                const double m = s->m, m1 = m - 1.0;
                const double nan_below_1 = m > 0.0 ? 0.0 : NAN;
                const double nan_below_2 = m > 1.0 ? 0.0 : NAN;
                const double before = s->last; /* the previous rated value */
                if (rated) {
                    s->prev2 = s->prev; s->prev = s->last; s->last = v;
                    if (isnan(s->first)) s->first = v;
                }
                const double last = s->last, prev = s->prev, first = s->first;
                const double step = v - before; /* NaN unless rated with a previous value */

                /* Sums centred on the first rating: a constant series has an SD of exactly 0. */
                const double y = rated ? v - first : 0.0;
                const double ty = rated ? m1 * y : 0.0;
                const double sq = step == step ? step * step : 0.0;
                if (first_row) {
                    s->s1 = y; s->s2 = y * y; s->sty = ty; s->ssd = sq;
                } else {
                    s->s1 += y; s->s2 += y * y; s->sty += ty; s->ssd += sq;
                }
                const double s1 = s->s1;
                const double sd = sqrt(max0(s->s2 - s1 * s1 / m) / m1) + nan_below_2;

                /* Rupture: a drop from the previous rated value of at least max(own SD at that
                 * value, floor) -- the floor alone before RUPTURE_MIN_HISTORY rated sessions. */
                const double base = m - r1 >= min_history ? fmax(s->sd_last, floor_) : floor_;
                const double drop = -step;
                const int rupture = drop >= base - eps;
                const double rup1 = flag(rupture), rup2 = flag(drop >= 2.0 * base - eps);
                s->n_rup = first_row ? rup1 : s->n_rup + rup1;
                s->n_rup2 = first_row ? rup2 : s->n_rup2 + rup2;
                const int64_t pos = i - a + 1;
                if (rupture) { s->rup_pos = pos; s->rup_sn = dsn; s->rup_level = before; }
                if (v >= s->rup_level - eps) s->back_pos = pos; /* NaN compares false */
                if (rated) s->sd_last = sd;

                const double z1 = m >= 2.0 ? prev : 0.0, z2 = m >= 3.0 ? s->prev2 : 0.0;
                t[off[N_RATED] + g] = m;
                t[off[EARLY_MEAN] + g] = s->early_sum / s->early_n;
                t[off[LAST] + g] = last;
                t[off[CHANGE_PREV] + g] = last - prev;
                t[off[LAST3_MEAN] + g] = (last + z1 + z2) / fmin(m, 3.0);
                t[off[MIN] + g] = s->min;
                t[off[CHANGE_FIRST] + g] = (last - first) + nan_below_2;
                t[off[DEV_OWN_MEAN] + g] = (last - (first + s1 / m)) + nan_below_2;
                /* OLS against t = 0..m-1: Sxy = sum(t*y) - tbar*sum(y), Sxx = m(m^2 - 1)/12. */
                t[off[SLOPE] + g] =
                    (s->sty - 0.5 * m1 * s1) / (m * (m * m - 1.0) / 12.0) + nan_below_2;
                t[off[MSSD] + g] = s->ssd / m1 + nan_below_2;
                t[off[SD] + g] = sd;
                t[off[RUPTURES_1SD] + g] = s->n_rup;
                t[off[RUPTURES_2SD] + g] = s->n_rup2;
                t[off[HAS_RUPTURE] + g] = flag(s->n_rup > 0.0);
                t[off[UNREPAIRED] + g] = flag(s->rup_pos > 0 && s->back_pos <= s->rup_pos);
                t[off[SINCE_RUPTURE] + g] = dsn - s->rup_sn;
                t[off[BELOW_CUTOFF] + g] = flag(last < k->cutoffs[g]) + nan_below_1;
            }

            /* ---- the overall (element mean) group's rules ---- */
            const Group *o = &k->groups[n_el];
            const int rated_o = n_rated_el > 0.0;
            if (rated_o) lowest_at_last = lowest;
            const double o_below_1 = o->m > 0.0 ? 0.0 : NAN, o_below_2 = o->m > 1.0 ? 0.0 : NAN;
            t[off[ANY_ELEMENT_BELOW]] =
                flag(lowest_at_last < k->params[P_ELEMENT_CUTOFF]) + o_below_1;
            /* A rated session has a finite lowest element, so < is the negation of >= here. */
            if (rated_o && lowest < k->params[P_CEILING]) not_ceiling_m = o->m;
            const double streak = o->m - not_ceiling_m;
            t[off[CEILING_STREAK]] = streak;
            t[off[CEILING_FLAG]] = flag(streak >= 2.0);
            t[off[DROP_ALERT]] = flag(o->prev - o->last >= k->params[P_DROP]) + o_below_2;
            t[off[NEVER_RATED]] = flag(o->m == 0.0);
            const double n_att = k->counts[k->c_att];
            t[off[UNRATED_SHARE]] = (n_att - o->m) / n_att; /* 0/0 = NaN: never attended */

            /* ---- write the row wherever it is a requested landmark ---- */
            for (int64_t j = k->out_start[i]; j < k->out_start[i + 1]; j++) {
                const int64_t r = k->out_rows[j];
                for (Py_ssize_t col = 0; col < k->n_cols; col++)
                    k->out_t[col * k->n_out + r] = t[k->src[col]];
            }
        }
    }
}

/* The table's size and each statistic's offset for ``n_codes`` codes and ``n_groups`` groups. */
static Py_ssize_t table_offsets(Py_ssize_t n_codes, Py_ssize_t n_groups, Py_ssize_t *off) {
    Py_ssize_t size = 0;
    for (int s = 0; s < N_STATS; s++) {
        off[s] = size;
        size += STATS[s].kind == ONE ? 1 : STATS[s].kind == PER_CODE ? n_codes : n_groups;
    }
    return size;
}

static int check_len(Py_buffer *buf, Py_ssize_t itemsize, Py_ssize_t expected, const char *name) {
    if (buf->len != itemsize * expected) {
        PyErr_Format(PyExc_ValueError, "feature kernel: %s has %zd bytes, expected %zd", name,
                     buf->len, itemsize * expected);
        return -1;
    }
    return 0;
}

/* Segment bounds: a[0] == 0, a[n] == end and never decreasing, so a[i]..a[i + 1] stays inside. */
static int check_bounds(const int64_t *a, Py_ssize_t n, Py_ssize_t end, const char *span_error,
                        const char *order_error) {
    if (a[0] != 0 || a[n] != end) {
        PyErr_Format(PyExc_ValueError, "feature kernel: %s", span_error);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i + 1] < a[i]) {
            PyErr_Format(PyExc_ValueError, "feature kernel: %s", order_error);
            return -1;
        }
    return 0;
}

static PyObject *kernel_fill(PyObject *self, PyObject *args) {
    Py_buffer sn, day, att, ratings, offsets, intake, age, cutoffs, params, codes, out_start,
        out_rows, src, out_t;
    Py_ssize_t n_el, n_out;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*y*w*nn", &sn, &day, &att, &ratings,
                          &offsets, &intake, &age, &cutoffs, &params, &codes, &out_start,
                          &out_rows, &src, &out_t, &n_el, &n_out))
        return NULL;
    Py_buffer *bufs[] = {&sn, &day, &att, &ratings, &offsets, &intake, &age, &cutoffs,
                         &params, &codes, &out_start, &out_rows, &src, &out_t};
    PyObject *result = NULL;
    Kernel k = {0};
    k.n = sn.len / 8;
    k.n_clients = offsets.len / 8 - 1;
    k.n_el = n_el;
    k.n_out = n_out;
    k.n_cols = src.len / 8;
    const Py_ssize_t G = n_el + 1;
    if (n_el < 1 || n_out < 0 || k.n_clients < 0 || sn.len % 8 || src.len % 8 ||
        out_rows.len % 8) {
        PyErr_SetString(PyExc_ValueError, "feature kernel: bad sizes");
        goto done;
    }
    if (check_len(&day, 8, k.n, "day") || check_len(&att, 1, k.n, "attendance") ||
        check_len(&ratings, 8, n_el * k.n, "ratings") ||
        check_len(&intake, 8, k.n_clients, "intake_day") ||
        check_len(&age, 8, k.n_clients, "age") || check_len(&cutoffs, 8, G, "cutoffs") ||
        check_len(&params, 8, N_PARAMS, "params") ||
        check_len(&codes, 8, N_CODE_PARAMS, "codes") ||
        check_len(&out_start, 8, k.n + 1, "out_start") ||
        check_len(&out_t, 8, k.n_cols * n_out, "out"))
        goto done;
    k.sn = sn.buf; k.day = day.buf; k.att = att.buf; k.ratings = ratings.buf;
    k.offsets = offsets.buf; k.intake = intake.buf; k.age = age.buf; k.cutoffs = cutoffs.buf;
    k.params = params.buf; k.out_start = out_start.buf; k.out_rows = out_rows.buf;
    k.src = src.buf; k.out_t = out_t.buf;
    const int64_t *cp = codes.buf;
    k.n_codes = cp[C_N]; k.c_att = cp[C_ATTENDED]; k.c_no_show = cp[C_NO_SHOW];
    k.c_late = cp[C_LATE_CANCEL];
    const Py_ssize_t size = table_offsets(k.n_codes, G, k.off);

    /* Everything the loop trusts is checked here, so it never reads or writes out of bounds. */
    if (check_bounds(k.offsets, k.n_clients, k.n, "offsets do not span the rows",
                     "offsets must not decrease"))
        goto done;
    for (Py_ssize_t i = 0; i < k.n; i++)
        if (k.att[i] < 0 || k.att[i] >= k.n_codes) {
            PyErr_Format(PyExc_ValueError, "feature kernel: row %zd has no attendance code", i);
            goto done;
        }
    if (check_bounds(k.out_start, k.n, out_rows.len / 8, "out_start does not span out_rows",
                     "out_start must not decrease"))
        goto done;
    for (Py_ssize_t j = 0; j < k.out_start[k.n]; j++)
        if (k.out_rows[j] < 0 || k.out_rows[j] >= n_out) {
            PyErr_SetString(PyExc_ValueError, "feature kernel: output row out of range");
            goto done;
        }
    for (Py_ssize_t col = 0; col < k.n_cols; col++)
        if (k.src[col] < 0 || k.src[col] >= size) {
            PyErr_SetString(PyExc_ValueError, "feature kernel: source statistic out of range");
            goto done;
        }

    k.groups = PyMem_Calloc((size_t)G, sizeof(Group));
    k.counts = PyMem_Calloc((size_t)k.n_codes + 1, sizeof(double));
    k.values = PyMem_Calloc((size_t)G, sizeof(double));
    k.table = PyMem_Calloc((size_t)size, sizeof(double));
    if (!k.groups || !k.counts || !k.values || !k.table) {
        PyErr_NoMemory();
        goto done;
    }
    if (k.n >= RELEASE_GIL_ROWS) {
        Py_BEGIN_ALLOW_THREADS
        run(&k);
        Py_END_ALLOW_THREADS
    } else {
        run(&k);
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(k.groups);
    PyMem_Free(k.counts);
    PyMem_Free(k.values);
    PyMem_Free(k.table);
    for (size_t b = 0; b < sizeof(bufs) / sizeof(bufs[0]); b++) PyBuffer_Release(bufs[b]);
    return result;
}

static PyObject *kernel_stat_keys(PyObject *self, PyObject *noargs) {
    PyObject *out = PyTuple_New(N_STATS);
    if (!out) return NULL;
    for (int s = 0; s < N_STATS; s++) {
        PyObject *item = Py_BuildValue("(si)", STATS[s].key, STATS[s].kind);
        if (!item) { Py_DECREF(out); return NULL; }
        PyTuple_SET_ITEM(out, s, item);
    }
    return out;
}

/* ratings(mappings, names, out, n_keys): the rating matrix of request objects, the one step of
 * packing a 1,000-client batch that was a Python loop over every (appointment, element) pair. */
static PyObject *kernel_ratings(PyObject *self, PyObject *args) {
    PyObject *mappings, *names;
    Py_buffer out, n_keys;
    if (!PyArg_ParseTuple(args, "O!O!w*w*", &PyList_Type, &mappings, &PyTuple_Type, &names, &out,
                          &n_keys))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t n = PyList_GET_SIZE(mappings), n_el = PyTuple_GET_SIZE(names);
    if (check_len(&out, 8, n_el * n, "out") || check_len(&n_keys, 8, n, "n_keys")) goto done;
    for (Py_ssize_t e = 0; e < n_el; e++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(names, e))) {
            PyErr_SetString(PyExc_TypeError, "ratings: names must be strings");
            goto done;
        }
    double *o = out.buf;
    int64_t *k = n_keys.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyList_GET_ITEM(mappings, i);
        if (!PyDict_Check(d)) {
            PyErr_Format(PyExc_TypeError, "ratings: item %zd is not a dict", i);
            goto done;
        }
        k[i] = PyDict_GET_SIZE(d);
        for (Py_ssize_t e = 0; e < n_el; e++) {
            PyObject *v = PyDict_GetItemWithError(d, PyTuple_GET_ITEM(names, e)); /* borrowed */
            double x;
            if (v == NULL) {
                if (PyErr_Occurred()) goto done;
                x = NAN;
            } else if (v == Py_None) {
                x = NAN;
            } else if (PyFloat_CheckExact(v)) {
                x = PyFloat_AS_DOUBLE(v);
            } else {
                x = PyFloat_AsDouble(v); /* ints, as numpy converts them */
                if (x == -1.0 && PyErr_Occurred()) goto done;
            }
            o[e * n + i] = x;
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&n_keys);
    return result;
}

static PyMethodDef methods[] = {
    {"fill", kernel_fill, METH_VARARGS,
     "fill(session_number, day, attendance, ratings, offsets, intake_day, age, cutoffs, params,\n"
     "     codes, out_start, out_rows, src, out_t, n_elements, n_out)\n\n"
     "Compute every statistic at every row and write, for each output column ``c``, statistic\n"
     "``src[c]`` of row ``i`` into ``out_t[c, r]`` for each ``r`` in\n"
     "``out_rows[out_start[i]:out_start[i + 1]]``. Buffers must be C-contiguous with the dtypes\n"
     "features.kernels passes (int64, int8, float64). Use features.kernels, not this."},
    {"ratings", kernel_ratings, METH_VARARGS,
     "ratings(mappings, names, out, n_keys)\n\n"
     "For a list of dicts, write ``out[e, i] = float(mappings[i][names[e]])`` (NaN where the key\n"
     "is missing or None) into a C-contiguous float64 buffer of shape (len(names),\n"
     "len(mappings)), and ``n_keys[i] = len(mappings[i])`` into an int64 buffer."},
    {"stat_keys", kernel_stat_keys, METH_NOARGS,
     "The statistics table: ((key, kind), ...), kind 0 = one value, 1 = one per attendance\n"
     "code, 2 = one per rating group (elements, then the element mean)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "features._kernel",
    "Compiled feature kernel (see features.kernels).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
