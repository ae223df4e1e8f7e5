from setuptools import Extension, setup

import ulp_build.integrations.setuptools

setup(
    packages=["greeting"],
    package_dir={"": "src"},
    ext_modules=[Extension("greeting._greet", ["src/greeting/_greet.c"])],
    # The one line that makes every extension module live-patchable:
    cmdclass={"build_ext": ulp_build.integrations.setuptools.build_ext},
)
