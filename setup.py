"""oneclass_jax: deep one-class classification (Sohn et al., ICLR 2021) in JAX/Flax."""
import setuptools

setuptools.setup(
    name="oneclass_jax",
    version="0.1.0",
    description=("Two-stage deep one-class classification: self-supervised "
                 "representations (JAX/Flax) + shallow one-class detectors."),
    packages=setuptools.find_packages(include=["oneclass_jax", "oneclass_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        # jax.export's (de)serialisation of the exported scorer needs it and
        # jax does not declare it.
        "flatbuffers",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        # Workdir files (local or gs://) through epath; fsspec is its backend.
        "etils[epath]",
        "chex>=0.1.90",
        "dm-pix>=0.4.3",
        "grain>=0.2.12",
        # tfds reads and writes array_record data sources without TensorFlow;
        # its builders need importlib_resources, which it does not declare.
        "tensorflow-datasets>=4.9.9",
        "importlib_resources",
        # 1.6: estimator_checks_generator and expected failures (tests).
        "scikit-learn>=1.6",
        "ml_collections>=1.0",
        "absl-py>=2.1",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "pillow>=10",
        "numpy>=1.26",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        # TensorFlow is only needed to *prepare* tfds catalog datasets whose
        # builders use it (e.g. celeb_a); training never imports it.
        "tf": ["tensorflow-cpu"],
        # gs:// workdirs: epath's object-store backend and tensorboardX's.
        "gcs": ["etils[epath-gcs]", "google-cloud-storage"],
    },
)
