from tests.process_isolation import _single_thread_and_clean_process_group  # noqa: F401
