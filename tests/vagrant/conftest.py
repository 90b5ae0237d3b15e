"""The opt-in Vagrant lab tests (tests/vagrant): their marker."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "vagrant: boots the Vagrant lab (minutes, root); opt-in: skipped unless "
                   "SPINES_KR_VAGRANT=1")
