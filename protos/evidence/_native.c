/* The server's ingest fast path and RFC 6962 pair hashing, in C: protos.evidence._native.
 *
 * `hash_pairs(pairs)` hashes consecutive 64-byte (left, right) pairs into their RFC 6962
 * interior nodes, SHA-256(0x01 || left || right), without the GIL (MerkleTree.extend).
 *
 * `read_access_batch(...)` is server.batch_checks.read_batch for a batch of access events: in one
 * pass it checks the records' seqs and chain hashes from the stored head, decodes each
 * custodes.v1.Event by hand (Event -> AccessDecision -> Subject, Object), checks it names
 * this agent, client and seq, and hashes its RFC 6962 leaf; then it builds the StoredRecord
 * and Observation tuples exactly as server.batch_checks.access_record and
 * server.detect.events.access_observation do. All hashing, decoding and UTF-8 validation run
 * without the GIL (the whole batch first), the Python objects after.
 *
 * It is conservative: anything that is not plainly a well-formed batch of access events
 * answers None, and the caller runs the step-by-step Python checks, which name the problem.
 * That is: a body other than access, an unknown field, a wire type that does not match its
 * field, a non-repeated field present twice (protobuf would merge or override), invalid UTF-8
 * in any string field (upb rejects it on parse, kept or not), a truncated varint or length,
 * a varint longer than 10 bytes or past 64 bits. Integers are read as protobuf reads them:
 * uint32 and enum fields truncate the varint to 32 bits, int64 fields take it as two's
 * complement; an enum value outside the name tables maps to None (as dict.get does).
 *
 * The field numbers and types the decoder uses are exposed as FIELDS; server.ingest checks
 * them against the generated descriptors at import, so the decoder cannot drift from
 * protos/custodes.proto unnoticed. The record and observation types, the action and verdict
 * name tables and the chain's domain come from Python once (`configure`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The low-level SHA-256 calls: deprecated in OpenSSL 3 in favour of EVP, whose per-digest
 * setup costs more than hashing a 100-byte event with SHA-NI. */
#define OPENSSL_API_COMPAT 0x10100000L
#include <openssl/sha.h>

#include <stdint.h>
#include <string.h>

#define HASH 32
#define PAIR 64
#define RELEASE_PAIRS 16 /* release the GIL for hash_pairs from this many pairs */

/* ---- The wire schema the decoder knows -------------------------------------------------- */

enum kind { K_STRING, K_UINT32, K_INT64, K_UINT64, K_ENUM, K_MESSAGE, K_STRINGS };
static const char *const KIND_NAMES[] = {"string", "uint32", "int64", "uint64",
                                         "enum",   "message", "repeated string"};

typedef struct {
    const char *name;
    uint32_t number;
    int kind;
    const char *target; /* a message field's type */
} field_t;

#define M_ACCESS "custodes.v1.AccessDecision"
#define M_SUBJECT "custodes.v1.Subject"
#define M_OBJECT "custodes.v1.Object"

/* Slots: the index of a field in its message's table, where its value lands. */
enum { E_AGENT_ID, E_CLIENT, E_BOOT_ID, E_SEQ, E_UNIX_NANOS, E_ACCESS, E_COUNT };
static const field_t EVENT[] = {
    {"agent_id", 1, K_STRING, NULL},
    {"client", 2, K_STRING, NULL},
    {"boot_id", 3, K_STRING, NULL},
    {"seq", 4, K_UINT64, NULL},
    {"unix_nanos", 5, K_INT64, NULL},
    {"access", 10, K_MESSAGE, M_ACCESS},
};
enum { A_SUBJECT, A_OBJECT, A_ACTION, A_VERDICT, A_REASON, A_RULE, A_GRANT_ID, A_MODE, A_COUNT };
static const field_t ACCESS[] = {
    {"subject", 1, K_MESSAGE, M_SUBJECT},
    {"object", 2, K_MESSAGE, M_OBJECT},
    {"action", 3, K_ENUM, NULL},
    {"verdict", 4, K_ENUM, NULL},
    {"reason", 5, K_STRING, NULL},
    {"rule", 6, K_STRING, NULL},
    {"grant_id", 7, K_STRING, NULL},
    {"mode", 8, K_ENUM, NULL},
};
enum {
    S_TECHNICIAN, S_PRINCIPAL, S_OS_USER, S_UID, S_LOGINUID, S_LOGIN_USER,
    S_SESSION_ID, S_PID, S_PPID, S_EXE, S_CMDLINE, S_COUNT
};
static const field_t SUBJECT[] = {
    {"technician", 1, K_STRING, NULL},
    {"principal", 2, K_STRING, NULL},
    {"os_user", 3, K_STRING, NULL},
    {"uid", 4, K_UINT32, NULL},
    {"loginuid", 5, K_INT64, NULL},
    {"login_user", 6, K_STRING, NULL},
    {"session_id", 7, K_UINT32, NULL},
    {"pid", 8, K_UINT32, NULL},
    {"ppid", 9, K_UINT32, NULL},
    {"exe", 10, K_STRING, NULL},
    {"cmdline", 11, K_STRING, NULL},
};
enum { O_PATH, O_AREA, O_KINDS, O_INDIVIDUALS, O_DEVICE, O_INODE, O_COUNT };
static const field_t OBJECT[] = {
    {"path", 1, K_STRING, NULL},
    {"area", 2, K_STRING, NULL},
    {"kinds", 3, K_STRINGS, NULL},
    {"individuals_estimate", 4, K_UINT32, NULL},
    {"device", 5, K_UINT64, NULL},
    {"inode", 6, K_UINT64, NULL},
};

typedef struct {
    const char *name; /* full protobuf name */
    const field_t *fields;
    int count;
} message_t;

static const message_t MESSAGES[] = {
    {"custodes.v1.Event", EVENT, E_COUNT},
    {M_ACCESS, ACCESS, A_COUNT},
    {M_SUBJECT, SUBJECT, S_COUNT},
    {M_OBJECT, OBJECT, O_COUNT},
};

/* A decoded field: its varint value, or where its bytes lie (strings, messages). */
typedef struct {
    uint64_t u;
    const uint8_t *p;
    Py_ssize_t n;
} value_t;

typedef struct {
    value_t ev[E_COUNT], ad[A_COUNT], su[S_COUNT], ob[O_COUNT];
    uint32_t kinds; /* how many kinds entries the object holds */
} decoded_t;

/* ---- Wire decoding (no Python calls: runs without the GIL) ----------------------------- */

/* A varint of at most 10 bytes whose value fits in 64 bits; the bytes read, 0 if not. */
static inline int read_varint(const uint8_t *p, const uint8_t *end, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p + i >= end)
            return 0;
        uint8_t b = p[i];
        if (i == 9 && b > 1)
            return 0; /* past 64 bits (upb drops them; leave it to Python) */
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = v;
            return i + 1;
        }
    }
    return 0;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as upb checks. */
static int valid_utf8(const uint8_t *p, Py_ssize_t n) {
    const uint8_t *end = p + n;
    while (p < end) {
        if (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (!(w & 0x8080808080808080ULL)) {
                p += 8;
                continue;
            }
        }
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
        } else if (c >= 0xc2 && c <= 0xdf) {
            if (end - p < 2 || (p[1] & 0xc0) != 0x80)
                return 0;
            p += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (end - p < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
                return 0;
            if (c == 0xe0 && p[1] < 0xa0)
                return 0; /* overlong */
            if (c == 0xed && p[1] > 0x9f)
                return 0; /* surrogate */
            p += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (end - p < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 ||
                (p[3] & 0xc0) != 0x80)
                return 0;
            if (c == 0xf0 && p[1] < 0x90)
                return 0; /* overlong */
            if (c == 0xf4 && p[1] > 0x8f)
                return 0; /* past U+10FFFF */
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Decode one message's fields into `out` (indexed by slot); 0 on anything not plain. */
static int decode_message(const message_t *m, const uint8_t *p, Py_ssize_t n, value_t *out,
                          uint32_t *kinds) {
    uint32_t seen = 0;
    memset(out, 0, sizeof(value_t) * (size_t)m->count);
    if (!n)
        return 1; /* empty or absent (p may be NULL): all defaults */
    const uint8_t *end = p + n;
    while (p < end) {
        uint64_t tag;
        int used = read_varint(p, end, &tag);
        if (!used || tag > UINT32_MAX)
            return 0;
        p += used;
        uint32_t number = (uint32_t)(tag >> 3), wire = (uint32_t)(tag & 7);
        int slot = -1;
        for (int i = 0; i < m->count; i++) {
            if (m->fields[i].number == number) {
                slot = i;
                break;
            }
        }
        if (slot < 0)
            return 0; /* unknown field, or a body other than access */
        int kind = m->fields[slot].kind;
        if (kind != K_STRINGS) {
            if (seen & (1u << slot))
                return 0; /* protobuf would merge or override */
            seen |= 1u << slot;
        }
        value_t *v = &out[slot];
        if (kind == K_STRING || kind == K_MESSAGE || kind == K_STRINGS) {
            uint64_t len;
            if (wire != 2 || !(used = read_varint(p, end, &len)))
                return 0;
            p += used;
            if (len > (uint64_t)(end - p))
                return 0;
            if (kind != K_MESSAGE && !valid_utf8(p, (Py_ssize_t)len))
                return 0;
            if (kind == K_STRINGS) {
                (*kinds)++; /* the entries are found again by walking the object */
            } else {
                v->p = p;
                v->n = (Py_ssize_t)len;
            }
            p += len;
        } else {
            if (wire != 0 || !(used = read_varint(p, end, &v->u)))
                return 0;
            p += used;
        }
    }
    return 1;
}

static int decode_event(const uint8_t *p, Py_ssize_t n, decoded_t *d) {
    d->kinds = 0;
    if (!decode_message(&MESSAGES[0], p, n, d->ev, &d->kinds) || !d->ev[E_ACCESS].p)
        return 0;
    if (!decode_message(&MESSAGES[1], d->ev[E_ACCESS].p, d->ev[E_ACCESS].n, d->ad, &d->kinds))
        return 0;
    /* An absent subject or object reads as an empty one (all defaults), as in protobuf. */
    if (!decode_message(&MESSAGES[2], d->ad[A_SUBJECT].p, d->ad[A_SUBJECT].n, d->su, &d->kinds))
        return 0;
    return decode_message(&MESSAGES[3], d->ad[A_OBJECT].p, d->ad[A_OBJECT].n, d->ob, &d->kinds);
}

/* ---- Configuration from Python ---------------------------------------------------------- */

static PyTypeObject *record_type, *observation_type;
static PyObject *actions, *verdicts; /* dict: enum number -> name */
static PyObject *s_access, *s_seq, *s_event, *s_chain_hash;
static SHA256_CTX seeded; /* SHA-256 fed the chain's domain */
static int configured;

/* The fields build() fills, by position: configure() checks the types' _fields against them,
 * so a reordered or renamed StoredRecord or Observation fails at import, not silently. */
static const char *const RECORD_NAMES[] = {
    "agent_id",   "seq",     "event", "chain_hash", "client",  "unix_nanos", "kind",
    "technician", "account", "area",  "action",     "verdict", "rule",       "path",
};
static const char *const OBSERVATION_NAMES[] = {
    "agent_id", "seq", "client", "unix_nanos", "kind", "technician", "principal", "account",
    "uid", "login_account", "loginuid", "area", "action", "verdict", "rule", "path", "kinds",
    "individuals_estimate", "grant_id", "grant_kind", "agreement_version",
    "agreement_accepted", "detail",
};
#define RECORD_FIELDS ((Py_ssize_t)(sizeof RECORD_NAMES / sizeof *RECORD_NAMES))
#define OBSERVATION_FIELDS ((Py_ssize_t)(sizeof OBSERVATION_NAMES / sizeof *OBSERVATION_NAMES))

static int check_tuple_type(PyObject *t, const char *const *expected, Py_ssize_t fields,
                            const char *what) {
    if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &PyTuple_Type) ||
        ((PyTypeObject *)t)->tp_dictoffset != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a NamedTuple type without a __dict__", what);
        return 0;
    }
    PyObject *names = PyObject_GetAttrString(t, "_fields");
    if (!names)
        return 0;
    int ok = PyTuple_Check(names) && PyTuple_GET_SIZE(names) == fields;
    for (Py_ssize_t i = 0; ok && i < fields; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        ok = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, expected[i]) == 0;
    }
    if (!ok) {
        PyErr_Format(PyExc_TypeError,
                     "%s has the fields %R; expected these %zd in the order "
                     "protos/evidence/_native.c builds them (update it and rebuild)",
                     what, names, fields);
    }
    Py_DECREF(names);
    return ok;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *rec, *obs, *act, *ver;
    Py_buffer domain;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOO!O!y*:configure", &rec, &obs, &PyDict_Type, &act, &PyDict_Type,
                          &ver, &domain))
        return NULL;
    if (!check_tuple_type(rec, RECORD_NAMES, RECORD_FIELDS, "the record type") ||
        !check_tuple_type(obs, OBSERVATION_NAMES, OBSERVATION_FIELDS, "the observation type")) {
        PyBuffer_Release(&domain);
        return NULL;
    }
    SHA256_Init(&seeded);
    SHA256_Update(&seeded, domain.buf, (size_t)domain.len);
    PyBuffer_Release(&domain);
    Py_INCREF(rec);
    Py_INCREF(obs);
    Py_INCREF(act);
    Py_INCREF(ver);
    Py_XSETREF(record_type, (PyTypeObject *)rec);
    Py_XSETREF(observation_type, (PyTypeObject *)obs);
    Py_XSETREF(actions, act);
    Py_XSETREF(verdicts, ver);
    configured = 1;
    Py_RETURN_NONE;
}

/* ---- hash_pairs ------------------------------------------------------------------------ */

static void hash_pairs_into(const uint8_t *in, Py_ssize_t pairs, uint8_t *out) {
    static const uint8_t one = 1;
    for (Py_ssize_t i = 0; i < pairs; i++) {
        SHA256_CTX c;
        SHA256_Init(&c);
        SHA256_Update(&c, &one, 1);
        SHA256_Update(&c, in + i * PAIR, PAIR);
        SHA256_Final(out + i * HASH, &c);
    }
}

static PyObject *hash_pairs(PyObject *self, PyObject *arg) {
    Py_buffer in;
    (void)self;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    if (in.len % PAIR) {
        PyErr_Format(PyExc_ValueError, "pairs are %zd bytes, expected a multiple of 64", in.len);
        PyBuffer_Release(&in);
        return NULL;
    }
    Py_ssize_t pairs = in.len / PAIR;
    PyObject *out = PyBytes_FromStringAndSize(NULL, pairs * HASH);
    if (out) {
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        if (pairs >= RELEASE_PAIRS) {
            Py_BEGIN_ALLOW_THREADS hash_pairs_into(in.buf, pairs, o);
            Py_END_ALLOW_THREADS
        } else {
            hash_pairs_into(in.buf, pairs, o);
        }
    }
    PyBuffer_Release(&in);
    return out;
}

/* ---- read_access_batch ----------------------------------------------------------------- */

typedef struct {
    PyObject *event, *chain; /* the record's bytes objects (references held) */
    decoded_t d;
    uint8_t leaf[HASH];
} item_t;

/* Decode and hash the whole batch (no GIL); the chain head into `prev`. 1 if all is plain.
 * Every event is decoded before any is hashed: a batch holding another kind of event (left
 * to Python) is given up without hashing. */
static int check_items(item_t *items, Py_ssize_t n, uint64_t first, uint8_t prev[HASH],
                       const char *agent, Py_ssize_t agent_n, const char *client,
                       Py_ssize_t client_n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        decoded_t *d = &items[i].d;
        if (!decode_event((const uint8_t *)PyBytes_AS_STRING(items[i].event),
                          PyBytes_GET_SIZE(items[i].event), d) ||
            d->ev[E_SEQ].u != first + (uint64_t)i || d->ev[E_AGENT_ID].n != agent_n ||
            (agent_n && memcmp(d->ev[E_AGENT_ID].p, agent, agent_n)) ||
            d->ev[E_CLIENT].n != client_n ||
            (client_n && memcmp(d->ev[E_CLIENT].p, client, client_n)))
            return 0;
    }
    uint8_t header[16], leaf_in[1 + 8 + HASH];
    for (Py_ssize_t i = 0; i < n; i++) {
        item_t *it = &items[i];
        uint64_t seq = first + (uint64_t)i;
        Py_ssize_t len = PyBytes_GET_SIZE(it->event);
        for (int b = 0; b < 8; b++) {
            header[b] = (uint8_t)(seq >> (56 - 8 * b));
            header[8 + b] = (uint8_t)((uint64_t)len >> (56 - 8 * b));
        }
        SHA256_CTX c = seeded;
        SHA256_Update(&c, prev, HASH);
        SHA256_Update(&c, header, sizeof header);
        SHA256_Update(&c, PyBytes_AS_STRING(it->event), (size_t)len);
        SHA256_Final(prev, &c);
        if (memcmp(prev, PyBytes_AS_STRING(it->chain), HASH))
            return 0;
        leaf_in[0] = 0;
        memcpy(leaf_in + 1, header, 8);
        memcpy(leaf_in + 9, prev, HASH);
        SHA256(leaf_in, sizeof leaf_in, it->leaf);
    }
    return 1;
}

/* A str from valid UTF-8, reusing the previous event's object when the bytes are the same
 * (technician, area, rule, … repeat across a batch); None when empty and `none_if_empty`. */
typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    PyObject *s;
} strcache_t;

static PyObject *text(strcache_t *c, const value_t *v, int none_if_empty) {
    if (!v->n) {
        if (none_if_empty)
            Py_RETURN_NONE;
    }
    if (c && c->s && c->n == v->n && (!v->n || !memcmp(c->p, v->p, v->n)))
        return Py_NewRef(c->s);
    PyObject *s = PyUnicode_DecodeUTF8((const char *)v->p, v->n, NULL);
    if (s && c) {
        Py_XSETREF(c->s, Py_NewRef(s));
        c->p = v->p;
        c->n = v->n;
    }
    return s;
}

static PyObject *name_of(PyObject *table, uint64_t u) {
    PyObject *key = PyLong_FromLong((long)(int32_t)(uint32_t)u); /* protobuf's int32 */
    if (!key)
        return NULL;
    PyObject *name = PyDict_GetItemWithError(table, key);
    Py_DECREF(key);
    if (!name && PyErr_Occurred())
        return NULL;
    return Py_NewRef(name ? name : Py_None);
}

static PyObject *kinds_tuple(const decoded_t *d, strcache_t *cache) {
    if (!d->kinds)
        return PyTuple_New(0);
    PyObject *t = PyTuple_New(d->kinds);
    if (!t)
        return NULL;
    /* Walk the object again: every field there was checked when it was decoded. */
    const uint8_t *p = d->ad[A_OBJECT].p;
    const uint8_t *end = p + d->ad[A_OBJECT].n;
    uint32_t at = 0;
    value_t v = {0, NULL, 0};
    while (p < end && at < d->kinds) {
        uint64_t tag = 0, len = 0;
        p += read_varint(p, end, &tag);
        if ((tag & 7) == 2) {
            p += read_varint(p, end, &len);
            if ((tag >> 3) == 3) {
                v.p = p;
                v.n = (Py_ssize_t)len;
                PyObject *s = text(cache, &v, 0);
                if (!s) {
                    Py_DECREF(t);
                    return NULL;
                }
                PyTuple_SET_ITEM(t, at++, s);
            }
            p += len;
        } else {
            p += read_varint(p, end, &len);
        }
    }
    return t;
}

enum { C_TECHNICIAN, C_PRINCIPAL, C_OS_USER, C_LOGIN_USER, C_AREA, C_RULE, C_GRANT, C_KINDS,
       C_COUNT };

/* Set item i of tuple t to a new reference; on NULL the caller drops t. */
#define PUT(t, i, expr)                                                                      \
    do {                                                                                     \
        PyObject *x_ = (expr);                                                               \
        if (!x_)                                                                             \
            goto fail;                                                                       \
        PyTuple_SET_ITEM((t), (i), x_);                                                      \
    } while (0)

/* tuple.__new__(type, ...) for a NamedTuple without a __dict__: a tuple of its size.
 *
 * The tuples built here hold only str, int, bytes, None and (kinds) a tuple of str, so they
 * cannot be part of a reference cycle: they are untracked by the garbage collector once
 * filled, as its first collection would do anyway (_PyTuple_MaybeUntrack), so the
 * collections the batch's allocations trigger do not traverse thousands of them. */
static PyObject *new_tuple(PyTypeObject *type, Py_ssize_t n) {
    return type->tp_alloc(type, n);
}

/* The StoredRecord and (when `obs` is not NULL) Observation of one decoded item. */
static int build(const item_t *it, uint64_t seq, PyObject *agent, PyObject *client,
                 strcache_t *cache, PyObject **rec_out, PyObject **obs_out) {
    const decoded_t *d = &it->d;
    PyObject *rec = new_tuple(record_type, RECORD_FIELDS), *obs = NULL;
    if (!rec)
        return 0;
    PUT(rec, 0, Py_NewRef(agent));
    PUT(rec, 1, PyLong_FromUnsignedLongLong(seq));
    PUT(rec, 2, Py_NewRef(it->event));
    PUT(rec, 3, Py_NewRef(it->chain));
    PUT(rec, 4, Py_NewRef(client));
    PUT(rec, 5, PyLong_FromLongLong((long long)(int64_t)d->ev[E_UNIX_NANOS].u));
    PUT(rec, 6, Py_NewRef(s_access));
    PUT(rec, 7, text(&cache[C_TECHNICIAN], &d->su[S_TECHNICIAN], 1));
    PUT(rec, 8, text(&cache[C_OS_USER], &d->su[S_OS_USER], 1));
    PUT(rec, 9, text(&cache[C_AREA], &d->ob[O_AREA], 1));
    PUT(rec, 10, name_of(actions, d->ad[A_ACTION].u));
    PUT(rec, 11, name_of(verdicts, d->ad[A_VERDICT].u));
    PUT(rec, 12, text(&cache[C_RULE], &d->ad[A_RULE], 1));
    PUT(rec, 13, text(NULL, &d->ob[O_PATH], 1));
    if (obs_out) {
        obs = new_tuple(observation_type, OBSERVATION_FIELDS);
        if (!obs)
            goto fail;
        PyObject *const *r = ((PyTupleObject *)rec)->ob_item;
        int64_t loginuid = (int64_t)d->su[S_LOGINUID].u;
        PUT(obs, 0, Py_NewRef(r[0]));
        PUT(obs, 1, Py_NewRef(r[1]));
        PUT(obs, 2, Py_NewRef(r[4]));
        PUT(obs, 3, Py_NewRef(r[5]));
        PUT(obs, 4, Py_NewRef(s_access));
        PUT(obs, 5, Py_NewRef(r[7]));
        PUT(obs, 6, text(&cache[C_PRINCIPAL], &d->su[S_PRINCIPAL], 1));
        PUT(obs, 7, Py_NewRef(r[8]));
        PUT(obs, 8, PyLong_FromUnsignedLong((uint32_t)d->su[S_UID].u));
        PUT(obs, 9, text(&cache[C_LOGIN_USER], &d->su[S_LOGIN_USER], 1));
        if (loginuid == -1 || loginuid == 4294967295LL)
            PUT(obs, 10, Py_NewRef(Py_None));
        else
            PUT(obs, 10, PyLong_FromLongLong(loginuid));
        for (int k = 0; k < 5; k++)
            PUT(obs, 11 + k, Py_NewRef(r[9 + k])); /* area, action, verdict, rule, path */
        PUT(obs, 16, kinds_tuple(d, &cache[C_KINDS]));
        PUT(obs, 17, PyLong_FromUnsignedLong((uint32_t)d->ob[O_INDIVIDUALS].u));
        PUT(obs, 18, text(&cache[C_GRANT], &d->ad[A_GRANT_ID], 1));
        for (int k = 19; k < OBSERVATION_FIELDS; k++)
            PUT(obs, k, Py_NewRef(Py_None));
        PyObject_GC_UnTrack(PyTuple_GET_ITEM(obs, 16));
        PyObject_GC_UnTrack(obs);
        *obs_out = obs;
    }
    PyObject_GC_UnTrack(rec);
    *rec_out = rec;
    return 1;
fail:
    Py_DECREF(rec);
    Py_XDECREF(obs);
    return 0;
}

static PyObject *read_access_batch(PyObject *self, PyObject *args) {
    PyObject *agent, *client, *records, *head_obj;
    unsigned long long first;
    Py_ssize_t max_events;
    int observe;
    (void)self;
    if (!PyArg_ParseTuple(args, "UUKSOnp:read_access_batch", &agent, &client, &first, &head_obj,
                          &records, &max_events, &observe))
        return NULL;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "protos.evidence._native.configure was not called");
        return NULL;
    }
    Py_ssize_t agent_n, client_n;
    const char *agent_s = PyUnicode_AsUTF8AndSize(agent, &agent_n);
    const char *client_s = agent_s ? PyUnicode_AsUTF8AndSize(client, &client_n) : NULL;
    if (!client_s) { /* a name with lone surrogates: no event can name it */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PySequence_Size(records);
    if (n < 0)
        return NULL;
    if (n == 0 || n > max_events || first + (uint64_t)(n - 1) < first ||
        PyBytes_GET_SIZE(head_obj) != HASH)
        Py_RETURN_NONE;
    item_t *items = PyMem_Calloc((size_t)n, sizeof(item_t));
    if (!items)
        return PyErr_NoMemory();
    PyObject *result = NULL, *out = NULL, *observations = NULL, *leaves = NULL;
    Py_ssize_t got = 0;
    int plain = 1;
    /* The wire records' seqs, event bytes and chain hashes (Python objects: with the GIL). */
    for (; got < n && plain; got++) {
        PyObject *r = PySequence_GetItem(records, got);
        if (!r)
            goto done;
        PyObject *seq = PyObject_GetAttr(r, s_seq);
        items[got].event = PyObject_GetAttr(r, s_event);
        items[got].chain = PyObject_GetAttr(r, s_chain_hash);
        Py_DECREF(r);
        if (!seq || !items[got].event || !items[got].chain) {
            Py_XDECREF(seq);
            got++;
            goto done;
        }
        unsigned long long s = PyLong_AsUnsignedLongLong(seq);
        Py_DECREF(seq);
        int bad = s == (unsigned long long)-1 && PyErr_Occurred();
        if (bad)
            PyErr_Clear();
        plain = !bad && s == first + (uint64_t)got && PyBytes_Check(items[got].event) &&
                PyBytes_Check(items[got].chain) && PyBytes_GET_SIZE(items[got].chain) == HASH;
    }
    if (!plain) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    uint8_t head[HASH];
    memcpy(head, PyBytes_AS_STRING(head_obj), HASH);
    Py_BEGIN_ALLOW_THREADS plain = check_items(items, n, first, head, agent_s, agent_n, client_s,
                                               client_n);
    Py_END_ALLOW_THREADS
    if (!plain) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    out = PyList_New(n);
    leaves = PyList_New(n);
    observations = observe ? PyList_New(n) : Py_NewRef(Py_None);
    if (!out || !leaves || !observations)
        goto done;
    strcache_t cache[C_COUNT];
    memset(cache, 0, sizeof cache);
    int ok = 1;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        PyObject *rec, *obs;
        ok = build(&items[i], first + (uint64_t)i, agent, client, cache, &rec,
                   observe ? &obs : NULL);
        if (ok) {
            PyList_SET_ITEM(out, i, rec);
            if (observe)
                PyList_SET_ITEM(observations, i, obs);
            PyObject *leaf = PyBytes_FromStringAndSize((const char *)items[i].leaf, HASH);
            if (!leaf)
                ok = 0;
            else
                PyList_SET_ITEM(leaves, i, leaf);
        }
    }
    for (int k = 0; k < C_COUNT; k++)
        Py_XDECREF(cache[k].s);
    if (!ok)
        goto done;
    PyObject *rotations = PyList_New(0);
    PyObject *new_head = PyBytes_FromStringAndSize((const char *)head, HASH);
    if (rotations && new_head)
        result = PyTuple_Pack(5, out, observations, rotations, leaves, new_head);
    Py_XDECREF(rotations);
    Py_XDECREF(new_head);
done:
    for (Py_ssize_t i = 0; i < got; i++) {
        Py_XDECREF(items[i].event);
        Py_XDECREF(items[i].chain);
    }
    PyMem_Free(items);
    Py_XDECREF(out);
    Py_XDECREF(observations);
    Py_XDECREF(leaves);
    return result;
}

/* ---- flat_rows ------------------------------------------------------------------------- */

/* A bytearray copy of bytes or another buffer (TypeError for anything else). Only C runs
 * here, never Python code that could change the lists flat_rows borrows from. */
static PyObject *blob(PyObject *b) {
    if (PyBytes_Check(b))
        return PyByteArray_FromStringAndSize(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
    Py_buffer view;
    if (PyObject_GetBuffer(b, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = PyByteArray_FromStringAndSize(view.buf, view.len);
    PyBuffer_Release(&view);
    return out;
}

/* The bound values of a multi-row INSERT, row after row: each record's first two fields,
 * its event, chain hash and leaf as bytearrays (sqlite3 binds those without an adapter
 * look-up), then the rest of its fields. */
static PyObject *flat_rows(PyObject *self, PyObject *args) {
    PyObject *records, *leaves;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!:flat_rows", &PyList_Type, &records, &PyList_Type, &leaves))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(records);
    if (PyList_GET_SIZE(leaves) != n) {
        PyErr_Format(PyExc_ValueError, "%zd records and %zd leaves, expected as many",
                     n, PyList_GET_SIZE(leaves));
        return NULL;
    }
    Py_ssize_t width = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) < 4 ||
            (width && PyTuple_GET_SIZE(r) != width)) {
            PyErr_SetString(PyExc_TypeError, "records must be tuples of one length (4 or more)");
            return NULL;
        }
        width = PyTuple_GET_SIZE(r);
    }
    PyObject *out = PyList_New(n * (width + 1));
    if (!out)
        return NULL;
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(records, i), *x;
        PyList_SET_ITEM(out, at++, Py_NewRef(PyTuple_GET_ITEM(r, 0)));
        PyList_SET_ITEM(out, at++, Py_NewRef(PyTuple_GET_ITEM(r, 1)));
        PyObject *blobs[3] = {PyTuple_GET_ITEM(r, 2), PyTuple_GET_ITEM(r, 3),
                              PyList_GET_ITEM(leaves, i)};
        for (int k = 0; k < 3; k++) {
            if (!(x = blob(blobs[k]))) {
                Py_DECREF(out); /* the unset items are NULL: a list drops them fine */
                return NULL;
            }
            PyList_SET_ITEM(out, at++, x);
        }
        for (Py_ssize_t k = 4; k < width; k++)
            PyList_SET_ITEM(out, at++, Py_NewRef(PyTuple_GET_ITEM(r, k)));
    }
    return out;
}

/* ---- The module ------------------------------------------------------------------------ */

static PyObject *fields_table(void) {
    /* ((message, field, number, kind, message type or ""), ...) as the decoder uses them. */
    Py_ssize_t total = 0;
    for (size_t m = 0; m < sizeof MESSAGES / sizeof *MESSAGES; m++)
        total += MESSAGES[m].count;
    PyObject *t = PyTuple_New(total);
    if (!t)
        return NULL;
    Py_ssize_t at = 0;
    for (size_t m = 0; m < sizeof MESSAGES / sizeof *MESSAGES; m++) {
        for (int f = 0; f < MESSAGES[m].count; f++) {
            const field_t *fd = &MESSAGES[m].fields[f];
            PyObject *row = Py_BuildValue("(ssIss)", MESSAGES[m].name, fd->name, fd->number,
                                          KIND_NAMES[fd->kind], fd->target ? fd->target : "");
            if (!row) {
                Py_DECREF(t);
                return NULL;
            }
            PyTuple_SET_ITEM(t, at++, row);
        }
    }
    return t;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(record_type, observation_type, actions, verdicts, chain_domain): the types "
     "and name tables read_access_batch builds with, and the chain's hash domain."},
    {"hash_pairs", hash_pairs, METH_O,
     "hash_pairs(pairs) -> bytes: SHA-256(0x01 || pair) of each 64-byte pair, back to back. "
     "ValueError when the length is not a multiple of 64."},
    {"flat_rows", flat_rows, METH_VARARGS,
     "flat_rows(records, leaves) -> list: per row record[0], record[1], bytearray(record[2]), "
     "bytearray(record[3]), bytearray(leaf), record[4:], row after row (SQLite's INSERT)."},
    {"read_access_batch", read_access_batch, METH_VARARGS,
     "read_access_batch(agent_id, client, first_seq, head, records, max_events, observe): "
     "(records, observations, rotations, leaves, new_head) of a plain batch of access events "
     "continuing the chain at (first_seq, head); None for anything else."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "protos.evidence._native",
    "The server's ingest fast path and RFC 6962 pair hashing (protos/evidence/_native.c).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    s_access = PyUnicode_InternFromString("access");
    s_seq = PyUnicode_InternFromString("seq");
    s_event = PyUnicode_InternFromString("event");
    s_chain_hash = PyUnicode_InternFromString("chain_hash");
    if (!s_access || !s_seq || !s_event || !s_chain_hash)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    PyObject *fields = fields_table();
    if (!fields || PyModule_AddObject(m, "FIELDS", fields) < 0) {
        Py_XDECREF(fields);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
