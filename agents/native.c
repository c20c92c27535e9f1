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
 * mac(key, data) -> 32 bytes, or None
 *     Keyed BLAKE2b-256 of ``data`` (RFC 7693), the chain frames' MAC (agents.wire): the
 *     same bytes as hashlib.blake2b(data, key=key, digest_size=32).digest(), for a key of
 *     1 to 64 bytes; None for any other argument. Cold, Python's hashlib call costs about
 *     25 us of a frame's first packet, most of it in the interpreter's argument handling
 *     and objects, not in the hash.
 * frame_types(version, frame_code, Frame, write_code, Write, answer_code, Answer, ack_code,
 *             Ack, gone_code, Gone)
 *     What the two calls below build and read: agents.wire's codes and agents.messages'
 *     classes, passed in once by agents.wire (their owners).
 * frame_encode(msg, key) -> payload bytes, or None
 * frame_decode(data, key) -> Frame, False (a wrong MAC), or None
 *     agents.wire's fast paths (a Frame with a Write, Answer, Ack or Gone body, or none),
 *     compiled: the same bytes and values as wire's Python fast paths, which run where these
 *     return None (anything they do not take: another shape, an unusual type or value, a
 *     malformed payload). ``key`` is the frame MAC's BLAKE2b key (wire.mac_key). Cold, the
 *     Python codec costs 25 to 45 us a chain frame, at each node on a new connection's path.
 *
 * The arithmetic is steering.py's, word for word, and RFC 7693's; tests/test_native.py
 * checks both against Python (the steering module, hashlib), and tests/test_wire_fast.py
 * checks the codec against wire's generic one.
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

/* --- BLAKE2b (RFC 7693), keyed, 32-byte digest ------------------------------------------ */

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const unsigned char B2_SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

#define B2_BLOCK 128
#define B2_OUT 32
#define B2_MAX_KEY 64

static inline uint64_t rotr64(uint64_t x, int r) { return (x >> r) | (x << (64 - r)); }

static inline uint64_t le64(const unsigned char *p)
{
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | p[i];
    return x;
}

#define B2_G(a, b, c, d, x, y)                 \
    do {                                       \
        v[a] = v[a] + v[b] + (x);              \
        v[d] = rotr64(v[d] ^ v[a], 32);        \
        v[c] = v[c] + v[d];                    \
        v[b] = rotr64(v[b] ^ v[c], 24);        \
        v[a] = v[a] + v[b] + (y);              \
        v[d] = rotr64(v[d] ^ v[a], 16);        \
        v[c] = v[c] + v[d];                    \
        v[b] = rotr64(v[b] ^ v[c], 63);        \
    } while (0)

/* one block into the state; ``t``: bytes hashed so far, this block's included */
static void b2_compress(uint64_t h[8], const unsigned char block[B2_BLOCK], uint64_t t, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++)
        m[i] = le64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= t;           /* the counter's high word stays 0: frames are far below 2^64 */
    if (last)
        v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const unsigned char *s = B2_SIGMA[r % 10];
        B2_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

static void b2_keyed(unsigned char out[B2_OUT], const unsigned char *key, size_t klen,
                     const unsigned char *data, size_t n)
{
    uint64_t h[8];
    unsigned char block[B2_BLOCK];
    for (int i = 0; i < 8; i++)
        h[i] = B2_IV[i];
    h[0] ^= 0x01010000ULL ^ ((uint64_t)klen << 8) ^ B2_OUT;
    /* the key, padded to a block, is the first block */
    memset(block, 0, B2_BLOCK);
    memcpy(block, key, klen);
    uint64_t t = B2_BLOCK;
    if (n == 0) {
        b2_compress(h, block, t, 1);
    } else {
        b2_compress(h, block, t, 0);
        while (n > B2_BLOCK) {
            t += B2_BLOCK;
            b2_compress(h, data, t, 0);
            data += B2_BLOCK;
            n -= B2_BLOCK;
        }
        memset(block, 0, B2_BLOCK);
        memcpy(block, data, n);
        t += n;
        b2_compress(h, block, t, 1);
    }
    for (int i = 0; i < B2_OUT; i++)
        out[i] = (unsigned char)(h[i / 8] >> (8 * (i % 8)));
}

/* a BLAKE2b key: 1 to 64 bytes */
static int mac_key_ok(PyObject *key)
{
    return PyBytes_CheckExact(key) && PyBytes_GET_SIZE(key) >= 1
        && PyBytes_GET_SIZE(key) <= B2_MAX_KEY;
}

static PyObject *native_mac(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "mac(key, data)");
        return NULL;
    }
    PyObject *key = args[0], *data = args[1];
    if (!mac_key_ok(key) || !PyBytes_CheckExact(data))
        Py_RETURN_NONE;
    unsigned char out[B2_OUT];
    b2_keyed(out, (const unsigned char *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key),
             (const unsigned char *)PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
    return PyBytes_FromStringAndSize((const char *)out, B2_OUT);
}

/* --- the hot chain frames' codec (agents.wire's fast paths) ------------------------------ */

#define HDR (2 + B2_OUT)  /* version, type, MAC */
#define SIGNED_MAX 2048   /* a hot frame's signed part is at most about 1,100 bytes */

enum { F_WRITE, F_ANSWER, F_ACK, F_GONE, F_BODIES };

static int frame_ready;
static unsigned char frame_version, frame_code_byte, body_code[F_BODIES];
static PyObject *frame_cls, *body_cls[F_BODIES], *empty_args;
/* interned attribute names */
static PyObject *s_src, *s_src_inc, *s_dst_inc, *s_epoch, *s_seq, *s_ack, *s_body, *s_key,
    *s_ver, *s_nf, *s_packet, *s_released, *s_lookup;

static int intern_names(void)
{
    struct { PyObject **slot; const char *name; } names[] = {
        {&s_src, "src"}, {&s_src_inc, "src_inc"}, {&s_dst_inc, "dst_inc"}, {&s_epoch, "epoch"},
        {&s_seq, "seq"}, {&s_ack, "ack"}, {&s_body, "body"}, {&s_key, "key"}, {&s_ver, "ver"},
        {&s_nf, "nf"}, {&s_packet, "packet"}, {&s_released, "released"}, {&s_lookup, "lookup"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return -1;
    }
    if (empty_args == NULL && (empty_args = PyTuple_New(0)) == NULL)
        return -1;
    return 0;
}

static int byte_of(PyObject *o, unsigned char *out)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > 255) {
        PyErr_SetString(PyExc_ValueError, "a code is one byte");
        return -1;
    }
    *out = (unsigned char)v;
    return 0;
}

static PyObject *native_frame_types(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 + 2 * F_BODIES) {
        PyErr_SetString(PyExc_TypeError, "frame_types(version, frame_code, Frame, write_code, "
                        "Write, answer_code, Answer, ack_code, Ack, gone_code, Gone)");
        return NULL;
    }
    if (intern_names() < 0 || byte_of(args[0], &frame_version) < 0
        || byte_of(args[1], &frame_code_byte) < 0)
        return NULL;
    PyObject *classes[1 + F_BODIES] = {args[2]};
    for (int i = 0; i < F_BODIES; i++) {
        if (byte_of(args[3 + 2 * i], &body_code[i]) < 0)
            return NULL;
        classes[1 + i] = args[4 + 2 * i];
    }
    for (int i = 0; i <= F_BODIES; i++) {
        if (!PyType_Check(classes[i])) {
            PyErr_SetString(PyExc_TypeError, "frame_types takes the message classes");
            return NULL;
        }
    }
    Py_INCREF(classes[0]);
    Py_XSETREF(frame_cls, classes[0]);
    for (int i = 0; i < F_BODIES; i++) {
        Py_INCREF(classes[1 + i]);
        Py_XSETREF(body_cls[i], classes[1 + i]);
    }
    frame_ready = 1;
    Py_RETURN_NONE;
}

/* --- encode */

typedef struct {
    unsigned char buf[SIGNED_MAX];
    size_t n;
} out_t;

static int put(out_t *o, const void *p, size_t n)
{
    if (o->n + n > SIGNED_MAX)
        return -1;
    memcpy(o->buf + o->n, p, n);
    o->n += n;
    return 0;
}

static int put_byte(out_t *o, unsigned char b) { return put(o, &b, 1); }

static int put_u64(out_t *o, uint64_t v)
{
    unsigned char b[8];
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (unsigned char)v;
    return put(o, b, 8);
}

/* attribute ``name`` of ``obj`` (a new reference), or NULL with no error set */
static PyObject *attr(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        PyErr_Clear();
    return v;
}

/* an unsigned 64-bit attribute, as struct's "Q" takes an int (bool included) */
static int put_q_attr(out_t *o, PyObject *obj, PyObject *name)
{
    PyObject *v = attr(obj, name);
    if (v == NULL)
        return -1;
    int ok = PyLong_Check(v);
    uint64_t x = ok ? PyLong_AsUnsignedLongLong(v) : 0;
    Py_DECREF(v);
    if (!ok || (x == (uint64_t)-1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    return put_u64(o, x);
}

/* a length byte and the UTF-8 of an exact str attribute (at most 255 bytes) */
static int put_text_attr(out_t *o, PyObject *obj, PyObject *name)
{
    PyObject *v = attr(obj, name);
    if (v == NULL)
        return -1;
    int rc = -1;
    if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(v, &n);
        if (u == NULL)
            PyErr_Clear();           /* a lone surrogate */
        else if (n <= 255 && put_byte(o, (unsigned char)n) == 0)
            rc = put(o, u, (size_t)n);
    }
    Py_DECREF(v);
    return rc;
}

/* a length byte and an exact bytes attribute (at most 255 bytes) */
static int put_bytes_attr(out_t *o, PyObject *obj, PyObject *name)
{
    PyObject *v = attr(obj, name);
    if (v == NULL)
        return -1;
    int rc = -1;
    if (PyBytes_CheckExact(v) && PyBytes_GET_SIZE(v) <= 255
        && put_byte(o, (unsigned char)PyBytes_GET_SIZE(v)) == 0)
        rc = put(o, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
    Py_DECREF(v);
    return rc;
}

static PyObject *native_frame_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "frame_encode(msg, key)");
        return NULL;
    }
    PyObject *msg = args[0], *key = args[1];
    if (!frame_ready || (PyObject *)Py_TYPE(msg) != frame_cls || !mac_key_ok(key))
        Py_RETURN_NONE;
    PyObject *body = attr(msg, s_body);
    if (body == NULL)
        Py_RETURN_NONE;
    int shape = -1;                  /* -1: none (a pure link ack) */
    if (body != Py_None) {
        for (int i = 0; i < F_BODIES; i++)
            if ((PyObject *)Py_TYPE(body) == body_cls[i])
                shape = i;
        if (shape < 0) {
            Py_DECREF(body);
            Py_RETURN_NONE;
        }
    }
    out_t o;
    o.n = 0;
    int bad = put_byte(&o, frame_version) || put_byte(&o, frame_code_byte)
        || put_text_attr(&o, msg, s_src) || put_q_attr(&o, msg, s_src_inc)
        || put_q_attr(&o, msg, s_dst_inc) || put_q_attr(&o, msg, s_epoch)
        || put_q_attr(&o, msg, s_seq) || put_q_attr(&o, msg, s_ack)
        || put_byte(&o, shape < 0 ? 0 : body_code[shape]);
    if (!bad && shape >= 0) {
        bad = put_bytes_attr(&o, body, s_key) || put_q_attr(&o, body, s_ver);
        if (!bad && shape != F_GONE)
            bad = put_text_attr(&o, body, s_nf);
        if (!bad && shape == F_ANSWER) {
            PyObject *r = attr(body, s_released);
            bad = r == NULL || !PyBool_Check(r) || put_byte(&o, r == Py_True)
                || put_q_attr(&o, body, s_lookup);
            Py_XDECREF(r);
        } else if (!bad && shape == F_WRITE) {
            bad = put_bytes_attr(&o, body, s_packet) || put_q_attr(&o, body, s_lookup);
        }
    }
    Py_DECREF(body);
    if (bad)
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(o.n + B2_OUT));
    if (out == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    p[0] = o.buf[0];
    p[1] = o.buf[1];
    b2_keyed(p + 2, (const unsigned char *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key),
             o.buf, o.n);
    memcpy(p + 2 + B2_OUT, o.buf + 2, o.n - 2);
    return out;
}

/* --- decode */

static uint64_t be64(const unsigned char *p)
{
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = x << 8 | p[i];
    return x;
}

/* a new instance of ``cls`` (object.__new__) with ``n`` attributes set past its
 * __setattr__ (a frozen dataclass's own __init__ sets them so); steals ``vals`` */
static PyObject *build(PyObject *cls, PyObject **names, PyObject **vals, int n)
{
    PyObject *obj = NULL;
    for (int i = 0; i < n; i++)
        if (vals[i] == NULL)
            goto done;
    obj = PyBaseObject_Type.tp_new((PyTypeObject *)cls, empty_args, NULL);
    for (int i = 0; obj != NULL && i < n; i++) {
        if (PyObject_GenericSetAttr(obj, names[i], vals[i]) < 0)
            Py_CLEAR(obj);
    }
done:
    for (int i = 0; i < n; i++)
        Py_XDECREF(vals[i]);
    return obj;
}

/* UTF-8 text, or NULL with no error set (malformed) */
static PyObject *text(const unsigned char *p, size_t n)
{
    PyObject *v = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "strict");
    if (v == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear();
    return v;
}

/* the body at s[off:len] of shape ``shape``, or NULL (no error set: malformed) */
static PyObject *parse_body(int shape, const unsigned char *s, size_t off, size_t len)
{
    if (off >= len)
        return NULL;
    size_t end = off + 1 + s[off];
    if (shape == F_GONE) {
        if (end + 8 != len)
            return NULL;
        PyObject *names[] = {s_key, s_ver};
        PyObject *vals[] = {PyBytes_FromStringAndSize((const char *)s + off + 1, s[off]),
                            PyLong_FromUnsignedLongLong(be64(s + end))};
        return build(body_cls[F_GONE], names, vals, 2);
    }
    if (end + 9 > len)
        return NULL;
    uint64_t ver = be64(s + end);
    size_t nf_at = end + 9, after = nf_at + s[end + 8];
    if (after > len)
        return NULL;
    if (shape == F_ACK) {
        if (after != len)
            return NULL;
        PyObject *names[] = {s_key, s_ver, s_nf};
        PyObject *vals[] = {PyBytes_FromStringAndSize((const char *)s + off + 1, s[off]),
                            PyLong_FromUnsignedLongLong(ver), text(s + nf_at, after - nf_at)};
        return build(body_cls[F_ACK], names, vals, 3);
    }
    if (shape == F_ANSWER) {
        if (after + 9 != len || s[after] > 1)
            return NULL;
        PyObject *released = s[after] ? Py_True : Py_False;
        Py_INCREF(released);
        PyObject *names[] = {s_key, s_ver, s_nf, s_released, s_lookup};
        PyObject *vals[] = {PyBytes_FromStringAndSize((const char *)s + off + 1, s[off]),
                            PyLong_FromUnsignedLongLong(ver), text(s + nf_at, after - nf_at),
                            released, PyLong_FromUnsignedLongLong(be64(s + after + 1))};
        return build(body_cls[F_ANSWER], names, vals, 5);
    }
    /* F_WRITE */
    if (after >= len)
        return NULL;
    size_t pend = after + 1 + s[after];
    if (pend + 8 != len)
        return NULL;
    PyObject *names[] = {s_key, s_ver, s_nf, s_packet, s_lookup};
    PyObject *vals[] = {PyBytes_FromStringAndSize((const char *)s + off + 1, s[off]),
                        PyLong_FromUnsignedLongLong(ver), text(s + nf_at, after - nf_at),
                        PyBytes_FromStringAndSize((const char *)s + after + 1, s[after]),
                        PyLong_FromUnsignedLongLong(be64(s + pend))};
    return build(body_cls[F_WRITE], names, vals, 5);
}

static PyObject *native_frame_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "frame_decode(data, key)");
        return NULL;
    }
    PyObject *data = args[0], *key = args[1];
    if (!frame_ready || !PyBytes_CheckExact(data) || !mac_key_ok(key))
        Py_RETURN_NONE;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    size_t n = (size_t)PyBytes_GET_SIZE(data);
    if (n <= HDR || n - B2_OUT > SIGNED_MAX || d[0] != frame_version || d[1] != frame_code_byte)
        Py_RETURN_NONE;
    /* the body type, after src and the five longs: not yet authentic, it only picks the path */
    size_t at = HDR + 1 + d[HDR] + 40;
    if (at >= n)
        Py_RETURN_NONE;
    int shape = d[at] ? -2 : -1;
    for (int i = 0; i < F_BODIES; i++)
        if (d[at] == body_code[i])
            shape = i;
    if (shape == -2)
        Py_RETURN_NONE;
    /* the signed part: version and type, then everything after the MAC */
    unsigned char s[SIGNED_MAX], mac[B2_OUT];
    size_t len = n - B2_OUT;
    s[0] = d[0];
    s[1] = d[1];
    memcpy(s + 2, d + HDR, n - HDR);
    b2_keyed(mac, (const unsigned char *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key),
             s, len);
    unsigned char diff = 0;
    for (int i = 0; i < B2_OUT; i++)
        diff |= mac[i] ^ d[2 + i];
    if (diff)
        Py_RETURN_FALSE;
    /* src, then the five longs and the body type (at <= n - 1 puts them inside s) */
    size_t off = 3 + (size_t)s[2];
    PyObject *body = Py_None;
    Py_INCREF(body);
    if (shape >= 0) {
        Py_DECREF(body);
        body = parse_body(shape, s, off + 41, len);
        if (body == NULL) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
    } else if (off + 41 != len) {
        Py_DECREF(body);
        Py_RETURN_NONE;
    }
    const unsigned char *l = s + off;
    PyObject *names[] = {s_src, s_src_inc, s_dst_inc, s_epoch, s_seq, s_ack, s_body};
    PyObject *vals[] = {text(s + 3, s[2]), PyLong_FromUnsignedLongLong(be64(l)),
                        PyLong_FromUnsignedLongLong(be64(l + 8)),
                        PyLong_FromUnsignedLongLong(be64(l + 16)),
                        PyLong_FromUnsignedLongLong(be64(l + 24)),
                        PyLong_FromUnsignedLongLong(be64(l + 32)), body};
    PyObject *frame = build(frame_cls, names, vals, 7);
    if (frame == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return frame;
}

static PyMethodDef methods[] = {
    {"flow_hash", native_flow_hash, METH_O, "OVS's symmetric L3/L4 hash of an IPv4 key"},
    {"steered_chain", (PyCFunction)(void (*)(void))native_steered_chain, METH_FASTCALL,
     "the chain of an IPv4 key in a steered view, or None"},
    {"mac", (PyCFunction)(void (*)(void))native_mac, METH_FASTCALL,
     "keyed BLAKE2b-256 of data (a key of 1 to 64 bytes), or None"},
    {"frame_types", (PyCFunction)(void (*)(void))native_frame_types, METH_FASTCALL,
     "the codes and classes frame_encode and frame_decode use"},
    {"frame_encode", (PyCFunction)(void (*)(void))native_frame_encode, METH_FASTCALL,
     "the payload of a hot chain frame, or None"},
    {"frame_decode", (PyCFunction)(void (*)(void))native_frame_decode, METH_FASTCALL,
     "the Frame in a hot chain frame's payload, False for a wrong MAC, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chainlb_native", "Compiled helpers of the first-packet path.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__chainlb_native(void) { return PyModule_Create(&module); }
