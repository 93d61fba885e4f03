"""tfmarl: reinforcement-learning recommender systems made of cooperating agents, on TensorFlow."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "tfmarl" / "__init__.py").read_text()).group(1)

setup(
    name="tfmarl",
    version=VERSION,
    description="Multi-agent reinforcement-learning recommenders on TensorFlow, TF-Agents and TFRS",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfmarl", "tfmarl.*"]),
    python_requires=">=3.10,<3.12",  # tf-agents needs pygame 2.1.3, which has no wheels for 3.12
    install_requires=[
        # The TensorFlow stack, pinned to a set that installs and runs together (see constraints.txt).
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "tensorflow-recommenders==0.7.7",
        "tf-agents==0.18.0",
        "tensorflow-probability==0.22.1",
        "keras==3.15.1",
        "keras-hub==0.32.0",
        "keras-nlp==0.32.0",
        "tensorflow-text==2.21.1",
        "tensorboard==2.21.0",
        "tensorflow-serving-api==2.21.0",
        "grpcio>=1.60",  # tfmarl serve's gRPC API
        "numpy>=1.26,<3",
        "pandas>=2.1",
        "pyarrow>=14",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={"test": ["pytest>=8",
                             # tests/test_notebook.py executes examples/quickstart.ipynb
                             "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"]},
    entry_points={"console_scripts": ["tfmarl=tfmarl.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
