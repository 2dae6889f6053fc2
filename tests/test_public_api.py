import dlactor

EXPECTED = {
    "Algorithm", "AlgorithmSettings", "ConfigError", "DataSettings", "EvalStats",
    "ModelSettings", "Node", "NodeEnv",
    "PartitionSettings", "Payload", "Plan", "RoundContext", "RunConfig", "SharingSettings",
    "TopologySettings", "TrainStats", "TrainingSettings", "__version__", "build_network",
    "build_node", "load_config", "make_plan", "register", "run_in_memory", "validate_config",
}  # fmt: skip


def test_public_api_is_exactly_what_all_lists() -> None:
    assert set(dlactor.__all__) == EXPECTED
    for name in dlactor.__all__:
        assert hasattr(dlactor, name), name


def test_version_matches_the_installed_distribution() -> None:
    from importlib.metadata import version

    assert dlactor.__version__ == version("dlactor")
