"""Packaging for idgateway.

The Twisted plugin file lives in ``twisted/plugins/`` (a namespace with no
``__init__.py``) so that ``twistd --help`` lists ``idgateway`` once installed.
"""

from setuptools import find_packages, setup

setup(
    name="idgateway",
    version="0.1.0",
    description="Identity gateway: OpenID Connect login in front of many apps, on Twisted",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["idgateway", "idgateway.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["idgateway_plugin.py"]},
    include_package_data=True,
    install_requires=[
        # The range the suite passes on: the floor is also tested by
        # `make test-floor` (the Makefile reads it from here). Before 26.4,
        # Twisted's TLS client with pyOpenSSL >= 25 did not check the peer's
        # name (tests/unit/test_tls.py fails on 25.5), and TLS listeners
        # failed their handshakes.
        "twisted[tls]>=26.4,<27",
        # HTTP/2 at the edge (server.h2_connection drives it; twisted[http2]
        # depends on the same library).
        "h2>=4.1,<5",
        "treq>=24.9",
        "service-identity>=24.1",
        "pyopenssl>=24.2",
        "josepy>=1.14",
        "txredisapi>=1.4.10",
        # YAML with line numbers for config errors; attrs for frozen config
        # values; cryptography for AES-GCM sessions and certificate checks.
        "PyYAML>=6.0",
        "attrs>=23.1",
        "cryptography>=42",
        # /metrics on the admin listener (Prometheus text exposition, own registry).
        "prometheus-client>=0.17",
        # Config regexes (public_paths '~', claim rules) in linear time: no
        # pattern can make a request stall the reactor. manylinux wheels.
        "google-re2>=1.1",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout",
            "websockets>=12",
            # Drives Debian's chromium (executable_path); never downloads a browser.
            "playwright>=1.40",
            "mypy",
            "ruff",
            "types-PyYAML",
            "mypy-zope",
            # tests/security/test_framing.py: the reference HTTP/1.1 parser the
            # gateway's framing is compared with, on generated inputs.
            "h11>=0.14",
            # Property tests: generated request targets against the path judge,
            # generated HTTP messages against h11.
            "hypothesis>=6.100",
            # Identity assertions are verified in the tests as an upstream would,
            # with an independent JOSE library (never the gateway's own code).
            "PyJWT[crypto]>=2.8",
            # make docs (and make test, which builds them): the Sphinx site in docs/,
            # with the built-in alabaster theme.
            "sphinx>=7",
        ],
    },
    entry_points={"console_scripts": ["idgateway=idgateway.cli:main"]},
)
