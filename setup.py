"""Package discovery only (everything else is in pyproject.toml): every package under adapterbank/ is
found, so a new subpackage cannot silently drop out of the wheel, and the CLI in cli/ installs as
`adapterbank_cli`. pyproject.toml alone cannot combine discovery with that renamed directory."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["adapterbank", "adapterbank.*"]), "adapterbank_cli"],
    package_dir={"adapterbank_cli": "cli"},
)
