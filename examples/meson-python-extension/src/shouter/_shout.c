/* shout(text) -> text + "!" */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *shout(PyObject *self, PyObject *args)
{
    PyObject *text;
    if (!PyArg_ParseTuple(args, "U", &text))
        return NULL;
    return PyUnicode_FromFormat("%U!", text);
}

static PyMethodDef methods[] = {
    {"shout", shout, METH_VARARGS, "Add emphasis."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_shout", NULL, -1, methods};

PyMODINIT_FUNC PyInit__shout(void)
{
    return PyModule_Create(&module);
}
