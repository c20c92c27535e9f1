/* Compiled helpers of the LB agent's first-packet path (``agents.native``).
 *
 * A new connection's first packet finds the agent's caches cold, and there the interpreter's
 * integer arithmetic is what a steered chain costs: about 70 us to place one key in Python
 * (agents/steering.py, agents/chain.py View._steered_chain), at each of the chain's nodes.
 * The same placement here touches a few hundred bytes of code.
 *
 * steered_chain(key, seeds, ties, names, chain_len) -> tuple of names, or None
 *     The chain of an IPv4 connection key (13 bytes) in a steered view: the members ranked
 *     by OVS's hash_2words(seed, flow_hash) score, highest first, the highest tie-break
 *     first among equal scores; the first ``chain_len``. None for any other key or for
 *     arguments this function does not take (the caller then ranks in Python).
 * flow_hash(key) -> int, or None
 *     OVS's symmetric L3/L4 hash of an IPv4 connection key (steering.flow_hash).
 *
 * The arithmetic is steering.py's, word for word; tests/test_native.py checks both give the
 * same results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_MEMBERS 256

static inline uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static inline uint32_t mix(uint32_t d)
{
    d *= 0xCC9E2D51u;
    return rotl32(d, 15) * 0x1B873593u;
}

static inline uint32_t step(uint32_t h) { return rotl32(h, 13) * 5u + 0xE6546B64u; }

static inline uint32_t add(uint32_t h, uint32_t d) { return step(h ^ mix(d)); }

static inline uint32_t finish(uint32_t h, uint32_t final)
{
    h ^= final;
    h = (h ^ (h >> 16)) * 0x85EBCA6Bu;
    h = (h ^ (h >> 13)) * 0xC2B2AE35u;
    return h ^ (h >> 16);
}

static inline uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint32_t le16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

/* the key's flow hash; 0 with *ok = 0 for a key that is not an IPv4 connection key */
static uint32_t key_hash(PyObject *key, int *ok)
{
    *ok = 0;
    if (!PyBytes_CheckExact(key) || PyBytes_GET_SIZE(key) != 13)
        return 0;
    const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
    /* "<BIHIH": proto, addr_lo, port_lo, addr_hi, port_hi */
    uint32_t proto = k[0], addr_lo = le32(k + 1), port_lo = le16(k + 5);
    uint32_t addr_hi = le32(k + 7), port_hi = le16(k + 11);
    uint32_t h = add(add(0, addr_lo ^ addr_hi), proto);
    if (proto == 6 || proto == 17 || proto == 132)
        h = add(h, port_lo ^ port_hi);
    *ok = 1;
    return finish(h, 0);
}

static PyObject *native_flow_hash(PyObject *self, PyObject *key)
{
    int ok;
    uint32_t h = key_hash(key, &ok);
    if (!ok)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(h);
}

/* a tuple item as a C long; 0 with *ok = 0 if it is not an int that fits */
static long item_long(PyObject *t, Py_ssize_t i, int *ok)
{
    PyObject *v = PyTuple_GET_ITEM(t, i);
    if (!PyLong_CheckExact(v)) {
        *ok = 0;
        return 0;
    }
    int overflow;
    long x = PyLong_AsLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        *ok = 0;
        return 0;
    }
    return x;
}

static PyObject *native_steered_chain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "steered_chain(key, seeds, ties, names, chain_len)");
        return NULL;
    }
    PyObject *key = args[0], *seeds = args[1], *ties = args[2], *names = args[3];
    if (!PyTuple_CheckExact(seeds) || !PyTuple_CheckExact(ties) || !PyTuple_CheckExact(names)
        || !PyLong_CheckExact(args[4]))
        Py_RETURN_NONE;
    Py_ssize_t n = PyTuple_GET_SIZE(seeds);
    if (PyTuple_GET_SIZE(ties) != n || PyTuple_GET_SIZE(names) != n || n > MAX_MEMBERS)
        Py_RETURN_NONE;
    long want = PyLong_AsLong(args[4]);
    if (want == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (want < 0)
        want = 0;
    if (want > n)
        want = n;
    int ok;
    uint32_t fh = key_hash(key, &ok);
    if (!ok)
        Py_RETURN_NONE;
    uint32_t score[MAX_MEMBERS];
    long tie[MAX_MEMBERS];
    unsigned char taken[MAX_MEMBERS];
    uint32_t mixed = mix(fh);
    ok = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        long s = item_long(seeds, i, &ok);
        tie[i] = item_long(ties, i, &ok);
        if (!ok || s < 0 || s > 0xFFFFFFFFL)
            Py_RETURN_NONE;
        score[i] = finish(step((uint32_t)s ^ mixed), 8);
        taken[i] = 0;
    }
    PyObject *out = PyTuple_New(want);
    if (out == NULL)
        return NULL;
    for (long r = 0; r < want; r++) {
        Py_ssize_t best = -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (taken[i])
                continue;
            if (best < 0 || score[i] > score[best]
                || (score[i] == score[best] && tie[i] > tie[best]))
                best = i;
        }
        taken[best] = 1;
        PyObject *name = PyTuple_GET_ITEM(names, best);
        Py_INCREF(name);
        PyTuple_SET_ITEM(out, r, name);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"flow_hash", native_flow_hash, METH_O, "OVS's symmetric L3/L4 hash of an IPv4 key"},
    {"steered_chain", (PyCFunction)(void (*)(void))native_steered_chain, METH_FASTCALL,
     "the chain of an IPv4 key in a steered view, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chainlb_native", "Compiled helpers of the first-packet path.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__chainlb_native(void) { return PyModule_Create(&module); }
