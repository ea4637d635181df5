from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shm._atomic",
            sources=["shm/_atomic.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
    ]
)
