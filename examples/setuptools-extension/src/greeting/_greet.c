/* greet(name) -> "hello, NAME"; shout(text) -> the text in capitals. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <ctype.h>

static PyObject *greet(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    return PyUnicode_FromFormat("hello, %s", name);
}

static PyObject *shout(PyObject *self, PyObject *args)
{
    const char *text;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "s#", &text, &size))
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(text, size);
    if (!out)
        return NULL;
    char *buf = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < size; i++)
        buf[i] = (char)toupper((unsigned char)buf[i]);
    PyObject *result = PyUnicode_FromStringAndSize(buf, size);
    Py_DECREF(out);
    return result;
}

static PyMethodDef methods[] = {
    {"greet", greet, METH_VARARGS, "Greet someone."},
    {"shout", shout, METH_VARARGS, "Capitalize ASCII text."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_greet", NULL, -1, methods};

PyMODINIT_FUNC PyInit__greet(void)
{
    return PyModule_Create(&module);
}
