/* Exact TreeSHAP from precomputed tables (models/treeshap.py): the per-row part, compiled.
 *
 * models/treeshap.py builds, once per model, each leaf's Shapley values for every pattern of
 * "does the row follow the path at its splits on feature s". Explaining a row is then: every
 * split's decision, each leaf's bit pattern, one table lookup per (leaf, slot), and a sum per
 * feature. In numpy that was ~20 array operations per call, ~50 us for one row of the served
 * model; here it is one pass with no temporaries beyond two small buffers (~11 us).
 *
 * Each feature's values are added one by one in ``value_order``, starting from the first, so a
 * row's result does not depend on the other rows of the call (alone or in a batch: same bits).
 * The numpy formulation summed the same terms partly pairwise: they agree to ~1e-15.
 *
 * The tables are validated and copied once, into a Tables object, when the model loads; a call
 * then only checks the sizes of its two buffers.
 *
 * Python side: models/treeshap.py owns the tables, their layout and the documentation; use
 * PathTables.contributions, not this.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Above this many rows the GIL is released while computing (batches score in a thread pool). */
#define RELEASE_GIL_ROWS 256

typedef struct {
    Py_ssize_t n_rows, n_features, n_splits, n_leaves, depth, k, n_values, n_used, row_len;
    const float *x;                 /* (n_rows, n_features) */
    const Py_ssize_t *split_feature; /* (n_splits,) */
    const float *threshold;          /* (n_splits,) */
    const uint8_t *default_left;     /* (n_splits,) */
    const Py_ssize_t *entry_split;   /* (k, depth, n_leaves): a split, or n_splits (constant) */
    const uint8_t *goes_right;       /* (k, depth, n_leaves) */
    const Py_ssize_t *leaf_row;      /* (n_leaves,) */
    const Py_ssize_t *value_order;   /* (n_values,) into (depth, n_leaves) */
    const Py_ssize_t *feature_start; /* (n_used,) into value_order */
    const Py_ssize_t *used_features; /* (n_used,) */
    const double *table;             /* (depth, row_len) */
    double *out;                     /* (n_rows, n_features) */
    uint8_t *left;                   /* work: (n_splits + 1,) */
    double *values;                  /* work: (depth * n_leaves,) */
} Tables;

static void run(const Tables *t) {
    const Py_ssize_t L = t->n_leaves, D = t->depth, DL = D * L;
    for (Py_ssize_t r = 0; r < t->n_rows; r++) {
        const float *x = t->x + r * t->n_features;
        double *phi = t->out + r * t->n_features;
        /* Each split's decision; NaN follows the default direction (as x < threshold is false). */
        for (Py_ssize_t j = 0; j < t->n_splits; j++) {
            const float v = x[t->split_feature[j]];
            t->left[j] = isnan(v) ? t->default_left[j] : (uint8_t)(v < t->threshold[j]);
        }
        t->left[t->n_splits] = 1; /* the constant column of padding entries */
        for (Py_ssize_t l = 0; l < L; l++) {
            Py_ssize_t pattern = 0;
            for (Py_ssize_t s = 0; s < D; s++) {
                uint8_t bit = 1;
                for (Py_ssize_t e = s * L + l; e < t->k * DL; e += DL)
                    bit &= (uint8_t)(t->left[t->entry_split[e]] ^ t->goes_right[e]);
                pattern |= (Py_ssize_t)bit << s;
            }
            const Py_ssize_t at = t->leaf_row[l] + pattern;
            for (Py_ssize_t s = 0; s < D; s++) t->values[s * L + l] = t->table[s * t->row_len + at];
        }
        memset(phi, 0, (size_t)t->n_features * sizeof(double));
        for (Py_ssize_t g = 0; g < t->n_used; g++) {
            const Py_ssize_t end = g + 1 < t->n_used ? t->feature_start[g + 1] : t->n_values;
            Py_ssize_t j = t->feature_start[g];
            double acc = t->values[t->value_order[j]];
            for (j++; j < end; j++) acc += t->values[t->value_order[j]];
            phi[t->used_features[g]] = acc;
        }
    }
}

static int check_len(const Py_buffer *b, Py_ssize_t itemsize, Py_ssize_t count,
                     const char *name) {
    if (b->len != itemsize * count) {
        PyErr_Format(PyExc_ValueError, "treeshap: %s has %zd bytes, expected %zd", name, b->len,
                     itemsize * count);
        return -1;
    }
    return 0;
}

static int check_index(const Py_ssize_t *a, Py_ssize_t n, Py_ssize_t lo, Py_ssize_t hi,
                       const char *name) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] < lo || a[i] >= hi) {
            PyErr_Format(PyExc_ValueError, "treeshap: %s[%zd] out of range", name, i);
            return -1;
        }
    return 0;
}

/* A Tables object owns copies of the validated tables: checked once, when the model loads,
 * and never again per call (the checks cost half as much as explaining one row). */
typedef struct {
    PyObject_HEAD
    Tables t; /* x, out, left and values unset: they belong to each call */
} TablesObject;

static void tables_dealloc(TablesObject *self) {
    PyMem_Free((void *)self->t.split_feature);
    PyMem_Free((void *)self->t.threshold);
    PyMem_Free((void *)self->t.default_left);
    PyMem_Free((void *)self->t.entry_split);
    PyMem_Free((void *)self->t.goes_right);
    PyMem_Free((void *)self->t.leaf_row);
    PyMem_Free((void *)self->t.value_order);
    PyMem_Free((void *)self->t.feature_start);
    PyMem_Free((void *)self->t.used_features);
    PyMem_Free((void *)self->t.table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A private copy of a buffer (at least one byte allocated, so NULL always means no memory). */
static void *copy_of(const Py_buffer *b) {
    void *p = PyMem_Malloc(b->len ? (size_t)b->len : 1);
    if (p) memcpy(p, b->buf, (size_t)b->len);
    return p;
}

static PyObject *tables_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Py_buffer sf, thr, dl, es, gr, lr, vo, fs, uf, table;
    Py_ssize_t n_features, depth;
    if (kwds && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Tables() takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*nn", &sf, &thr, &dl, &es, &gr, &lr, &vo,
                          &fs, &uf, &table, &n_features, &depth))
        return NULL;
    Py_buffer *bufs[] = {&sf, &thr, &dl, &es, &gr, &lr, &vo, &fs, &uf, &table};
    TablesObject *self = NULL;
    const Py_ssize_t P = (Py_ssize_t)sizeof(Py_ssize_t);
    Tables t = {0};
    if (n_features < 1 || depth < 1 || depth > 8 || sf.len % P || lr.len % P || vo.len % P ||
        uf.len % P) {
        PyErr_SetString(PyExc_ValueError, "treeshap: bad sizes");
        goto done;
    }
    t.n_features = n_features;
    t.depth = depth;
    t.n_splits = sf.len / P;
    t.n_leaves = lr.len / P;
    t.n_values = vo.len / P;
    t.n_used = uf.len / P;
    const Py_ssize_t DL = depth * t.n_leaves;
    t.k = DL ? es.len / (P * DL) : 0;
    t.row_len = t.n_leaves << depth;
    if (check_len(&thr, 4, t.n_splits, "split_threshold") ||
        check_len(&dl, 1, t.n_splits, "split_default_left") ||
        check_len(&es, P, t.k * DL, "entry_split") ||
        check_len(&gr, 1, t.k * DL, "entry_goes_right") ||
        check_len(&fs, P, t.n_used, "feature_start") ||
        check_len(&table, 8, depth * t.row_len, "table"))
        goto done;
    /* Everything the loop trusts is checked here, so it never reads or writes out of bounds. */
    if (check_index(sf.buf, t.n_splits, 0, n_features, "split_feature") ||
        check_index(es.buf, t.k * DL, 0, t.n_splits + 1, "entry_split") ||
        check_index(lr.buf, t.n_leaves, 0, t.row_len - ((Py_ssize_t)1 << depth) + 1,
                    "leaf_row") ||
        check_index(vo.buf, t.n_values, 0, DL, "value_order") ||
        check_index(uf.buf, t.n_used, 0, n_features, "used_features") ||
        check_index(fs.buf, t.n_used, 0, t.n_values, "feature_start"))
        goto done;
    const Py_ssize_t *start = fs.buf;
    if (t.n_used && start[0] != 0) {
        PyErr_SetString(PyExc_ValueError, "treeshap: feature_start must start at 0");
        goto done;
    }
    for (Py_ssize_t g = 1; g < t.n_used; g++)
        if (start[g] <= start[g - 1]) {
            PyErr_SetString(PyExc_ValueError, "treeshap: feature_start must increase");
            goto done;
        }
    self = (TablesObject *)type->tp_alloc(type, 0);
    if (!self) goto done;
    self->t = t;
    /* Copies: the object cannot be changed by writing to the arrays it was made from. */
    self->t.split_feature = copy_of(&sf);
    self->t.threshold = copy_of(&thr);
    self->t.default_left = copy_of(&dl);
    self->t.entry_split = copy_of(&es);
    self->t.goes_right = copy_of(&gr);
    self->t.leaf_row = copy_of(&lr);
    self->t.value_order = copy_of(&vo);
    self->t.feature_start = copy_of(&fs);
    self->t.used_features = copy_of(&uf);
    self->t.table = copy_of(&table);
    if (!self->t.split_feature || !self->t.threshold || !self->t.default_left ||
        !self->t.entry_split || !self->t.goes_right || !self->t.leaf_row ||
        !self->t.value_order || !self->t.feature_start || !self->t.used_features ||
        !self->t.table) {
        Py_CLEAR(self);
        PyErr_NoMemory();
    }
done:
    for (size_t b = 0; b < sizeof(bufs) / sizeof(bufs[0]); b++) PyBuffer_Release(bufs[b]);
    return (PyObject *)self;
}

static PyObject *tables_contributions(TablesObject *self, PyObject *args) {
    Py_buffer x, out;
    if (!PyArg_ParseTuple(args, "y*w*", &x, &out)) return NULL;
    PyObject *result = NULL;
    Tables t = self->t;
    const Py_ssize_t DL = t.depth * t.n_leaves;
    if (x.len % (4 * t.n_features)) {
        PyErr_Format(PyExc_ValueError, "treeshap: x must hold rows of %zd float32",
                     t.n_features);
        goto done;
    }
    t.n_rows = x.len / (4 * t.n_features);
    if (check_len(&out, 8, t.n_rows * t.n_features, "out")) goto done;
    t.x = x.buf;
    t.out = out.buf;
    t.left = PyMem_Malloc((size_t)t.n_splits + 1);
    t.values = PyMem_Malloc((size_t)(DL ? DL : 1) * sizeof(double));
    if (!t.left || !t.values) {
        PyErr_NoMemory();
        goto done;
    }
    if (t.n_rows >= RELEASE_GIL_ROWS) {
        Py_BEGIN_ALLOW_THREADS
        run(&t);
        Py_END_ALLOW_THREADS
    } else {
        run(&t);
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(t.left);
    PyMem_Free(t.values);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef tables_methods[] = {
    {"contributions", (PyCFunction)tables_contributions, METH_VARARGS,
     "contributions(x, out)\n\n"
     "Write the TreeSHAP values of each row of ``x`` (C-contiguous float32, n_features per row)\n"
     "into ``out`` (C-contiguous float64, same shape)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TablesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "models._treeshap.Tables",
    .tp_basicsize = sizeof(TablesObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Tables(split_feature, split_threshold, split_default_left, entry_split,\n"
              "       entry_goes_right, leaf_row, value_order, feature_start, used_features,\n"
              "       table, n_features, depth)\n\n"
              "A validated private copy of PathTables' arrays (C-contiguous, intp indices).\n"
              "Use models.treeshap.PathTables, not this.",
    .tp_new = tables_new,
    .tp_dealloc = (destructor)tables_dealloc,
    .tp_methods = tables_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "models._treeshap",
    "Compiled per-row part of tabulated TreeSHAP; see models/treeshap.py.", -1, NULL,
};

PyMODINIT_FUNC PyInit__treeshap(void) {
    if (PyType_Ready(&TablesType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Tables", (PyObject *)&TablesType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
