"""Example models that kfnb's demo notebooks train as distributed jobs.

Kept import-cheap on purpose: submodules import TensorFlow only inside their
functions, so a notebook can import them before choosing how to run.
"""
