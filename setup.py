"""Packaging for Twitcher, a security proxy for OGC Web Services."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

requires = [
    "pyramid>=2.0,<3",
    "pyramid_rpc>=0.8",
    "pymongo>=4,<5",
    "pycurl>=7.45.3",  # the proxy's HTTP client, libcurl (twitcher/proxy/upstream.py); 7.45.3: Linux wheels
    "lxml>=4.9",
    "waitress>=2.1",
    "biscuit-python>=0.4,<0.5",  # signed federated tokens, wrapped in twitcher/federation/biscuit.py
]

extras = {
    "wps": ["pywps>=4.5"],
    "test": [
        "pytest>=7",
        "webtest>=3",
        "mongomock>=4.1",
        "hypothesis>=6",
        "owslib>=0.29",
        "pywps>=4.5",
        "ruff>=0.5",
        "requests>=2.28",  # the tests' and the benchmark's HTTP client
        # OGC API - Processes/Features backend of the ogcapi end-to-end suites (tests/test_e2e_ogcapi.py).
        "pygeoapi>=0.21,<0.22",
        "granian>=2.8,<3",  # tests/test_ops_runner.py starts `pserve production.ini`
        "prometheus-client>=0.20",  # tests/test_ops_metrics.py
    ],
    "docs": ["sphinx>=7.4"],  # 7.4: the confval directive of docs/configuration.rst
    # The production server of `pserve production.ini` (twitcher/ops/runner.py: granian, Rust, wheels)
    # and the metrics of twitcher.metrics (prometheus-client); gunicorn for `twitcher.wsgi:application`.
    "prod": ["granian>=2.8,<3", "prometheus-client>=0.20", "gunicorn>=21"],
    # uWSGI for those who run their own server (a C extension, compiled at install: needs gcc and the
    # Python headers): `uwsgi --paste config:production.ini ...`, see docs/deployment.rst;
    # `make bench BENCH_ARGS="--twitcher-server uwsgi"` compares it with pserve production.ini.
    "uwsgi": ["uWSGI>=2.0.21"],
    # Profiling the proxy under load: `make bench BENCH_ARGS="--profile 8"` (bench/run.py).
    "bench": ["py-spy>=0.3", "requests>=2.28"],
    # Coverage-guided fuzzing of the parsers and rewriters: `make fuzz` (fuzz/run.py).
    "fuzz": ["atheris>=2.3"],
}

setup(
    name="twitcher",
    version="0.5.0",
    description="A security proxy for OGC Web Services such as the Web Processing Service",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(exclude=["tests", "tests.*"]),
    include_package_data=True,
    zip_safe=False,
    install_requires=requires,
    extras_require=extras,
    classifiers=[
        "Framework :: Pyramid",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: GIS",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Application",
    ],
    entry_points={
        "paste.app_factory": ["main = twitcher:main"],
        "console_scripts": ["twitcherctl = twitcher.admin.client:main"],
        "paste.server_runner": ["granian = twitcher.ops.runner:serve_granian"],
    },
)
