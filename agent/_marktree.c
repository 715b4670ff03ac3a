/* Marking a directory tree for the gate, in C: agent._marktree.
 *
 * `mark_tree` walks every directory below a root (not following symlinks, at most
 * `max_dirs` listed) and puts an inode mark on each in both fanotify groups, with the GIL
 * released: 100k directories are 200k fanotify_mark calls and 100k listings, which Python
 * spent ~15 µs a directory on. Each directory is marked once its whole subtree has been
 * listed (post-order, the root last), so the walk never lists a marked directory or a child
 * of one: marking needs no answer thread. `walk` returns the same order without marking.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __linux__
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/stat.h>

typedef struct {
    char *path;
    int listed; /* 1: its subtree is listed; visit it */
} Item;

typedef struct {
    Item *items;
    size_t n, cap;
} Stack;

typedef struct {
    int perm_fd, notif_fd;
    unsigned long long perm_mask, notif_mask;
    const char *skip; /* not marked (the root of a rescan, marked already), or NULL */
    unsigned long long perm_placed, notif_placed, errors, entries;
    PyObject *order; /* walk(): the list to append to (GIL held) */
} Visit;

static int push(Stack *s, char *path, int listed) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        Item *items = realloc(s->items, cap * sizeof *items);
        if (!items) return -1;
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n].path = path;
    s->items[s->n].listed = listed;
    s->n++;
    return 0;
}

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *out = malloc(a + (size_t)slash + b + 1);
    if (!out) return NULL;
    memcpy(out, dir, a);
    if (slash) out[a] = '/';
    memcpy(out + a + slash, name, b + 1);
    return out;
}

static void mark(Visit *v, const char *path) {
    if (v->skip && strcmp(path, v->skip) == 0) return;
    unsigned flags = FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW | FAN_MARK_ONLYDIR;
    if (fanotify_mark(v->perm_fd, flags, v->perm_mask, AT_FDCWD, path) != 0) {
        v->errors++; /* vanished between listing and marking */
        return;
    }
    v->perm_placed++;
    if (v->notif_fd < 0) return;
    if (fanotify_mark(v->notif_fd, flags, v->notif_mask, AT_FDCWD, path) == 0)
        v->notif_placed++;
    else
        v->errors++;
}

/* List `path` and push its subdirectories; count its entries. */
static int list(Stack *s, Visit *v, const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0; /* vanished or unreadable: nothing below it to mark */
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        v->entries++;
        int is_dir = e->d_type == DT_DIR;
        if (e->d_type == DT_UNKNOWN) {
            struct stat st;
            is_dir = fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                     S_ISDIR(st.st_mode);
        }
        if (!is_dir) continue;
        char *child = join(path, e->d_name);
        if (!child || push(s, child, 0) != 0) {
            free(child);
            rc = -1;
            break;
        }
    }
    closedir(d);
    return rc;
}

/* The walk; with the GIL released unless v->order is set. -1: out of memory. */
static int walk_tree(const char *root, unsigned long long max_dirs, Visit *v) {
    Stack s = {0};
    char *first = strdup(root);
    if (!first || push(&s, first, 0) != 0) {
        free(first);
        free(s.items);
        return -1;
    }
    unsigned long long listed = 0;
    int rc = 0;
    while (s.n) {
        Item it = s.items[--s.n];
        if (it.listed) {
            if (v->order) {
                PyObject *p = PyUnicode_DecodeFSDefault(it.path);
                if (!p || PyList_Append(v->order, p) != 0) rc = -2;
                Py_XDECREF(p);
            } else {
                mark(v, it.path);
            }
            free(it.path);
            if (rc) break;
            continue;
        }
        if (listed >= max_dirs) { /* past the bound: neither listed nor marked */
            free(it.path);
            continue;
        }
        listed++;
        if (push(&s, it.path, 1) != 0 || list(&s, v, it.path) != 0) {
            rc = -1;
            break;
        }
    }
    for (size_t i = 0; i < s.n; i++) free(s.items[i].path);
    free(s.items);
    return rc;
}

static PyObject *mark_tree(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kw) {
    static char *names[] = {"perm_fd", "notif_fd", "root", "perm_mask", "notif_mask",
                            "skip_root", "max_dirs", NULL};
    Visit v = {0};
    PyObject *root_obj;
    int skip_root = 0;
    unsigned long long max_dirs = 5000000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiO&KK|pK", names, &v.perm_fd, &v.notif_fd,
                                     PyUnicode_FSConverter, &root_obj, &v.perm_mask,
                                     &v.notif_mask, &skip_root, &max_dirs))
        return NULL;
    const char *root = PyBytes_AS_STRING(root_obj);
    v.skip = skip_root ? root : NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = walk_tree(root, max_dirs, &v);
    Py_END_ALLOW_THREADS
    Py_DECREF(root_obj);
    if (rc) return PyErr_NoMemory();
    return Py_BuildValue("(KKKK)", v.perm_placed, v.notif_placed, v.errors, v.entries);
}

static PyObject *walk(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *root_obj;
    unsigned long long max_dirs = 5000000;
    if (!PyArg_ParseTuple(args, "O&|K", PyUnicode_FSConverter, &root_obj, &max_dirs)) return NULL;
    Visit v = {0};
    v.order = PyList_New(0);
    if (!v.order) {
        Py_DECREF(root_obj);
        return NULL;
    }
    int rc = walk_tree(PyBytes_AS_STRING(root_obj), max_dirs, &v);
    Py_DECREF(root_obj);
    if (rc) {
        Py_DECREF(v.order);
        return rc == -1 ? PyErr_NoMemory() : NULL;
    }
    return v.order;
}

static PyMethodDef methods[] = {
    {"mark_tree", (PyCFunction)(void (*)(void))mark_tree, METH_VARARGS | METH_KEYWORDS,
     "mark_tree(perm_fd, notif_fd, root, perm_mask, notif_mask, skip_root=False, "
     "max_dirs=5000000) -> (perm marks placed, notification marks placed, errors, entries "
     "listed). notif_fd -1: the permission group only."},
    {"walk", walk, METH_VARARGS,
     "walk(root, max_dirs=5000000) -> every directory below root, in the order mark_tree "
     "marks them (each after its subtree, root last)"},
    {NULL, NULL, 0, NULL},
};
#else
static PyMethodDef methods[] = {{NULL, NULL, 0, NULL}};
#endif /* __linux__ */

static struct PyModuleDef marktree_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "agent._marktree",
    .m_doc = "Marking a directory tree for the gate, in C (Linux only).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__marktree(void) { return PyModule_Create(&marktree_module); }
