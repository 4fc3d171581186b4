"""The list of packages, which pyproject.toml (where everything else is) cannot express: every package under
ncsn_jax/, found, so that a new one ships without a list to update, and the repository's configs/ folder,
installed as ncsn_jax.configs (not as a top-level `configs`, a name that any project may take)."""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["ncsn_jax", "ncsn_jax.*"]), "ncsn_jax.configs"],
    package_dir={"ncsn_jax.configs": "configs"},
)
