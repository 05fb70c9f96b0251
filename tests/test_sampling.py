"""The one check of sampling settings (config.check_sampling, run by every Sampling): which
settings pass and, for each refused one, the setting named and the exact bounds. The CLI
(test_cli), params.yaml's eval section (test_config) and the server (test_serve) each report
its error their own way."""

from __future__ import annotations

import pytest

from xinslm.config import SamplingError
from xinslm.errors import XinslmError
from xinslm.sampling import Sampling

ACCEPTED = [
    {},  # the defaults
    {"temperature": 0},  # greedy
    {"temperature": 2.0, "top_p": 1.0, "top_k": 1, "max_new_tokens": 1},  # every edge
    {"temperature": 1, "top_p": 1e-9},  # an int temperature is a number
    {"top_k": None, "top_p": None},  # no cut
    {"seed": -(2**63)},
    {"seed": 2**63 - 1},
]

INTEGER = "an integer >= 1"
TEMPERATURE = "a number from 0 to 2 (0: greedy)"
TOP_P = "a number above 0 and at most 1"
SEED = "an integer from -2**63 to 2**63-1"
REFUSED = [
    ({"max_new_tokens": 0}, "max_new_tokens", f"must be {INTEGER}, got 0"),
    ({"max_new_tokens": 2.0}, "max_new_tokens", f"must be {INTEGER}, got 2.0"),
    ({"max_new_tokens": True}, "max_new_tokens", f"must be {INTEGER}, got True"),
    ({"temperature": -1}, "temperature", f"must be {TEMPERATURE}, got -1"),
    ({"temperature": -1e-9}, "temperature", f"must be {TEMPERATURE}, got -1e-09"),
    ({"temperature": 2.5}, "temperature", f"must be {TEMPERATURE}, got 2.5"),
    ({"temperature": float("nan")}, "temperature", f"must be {TEMPERATURE}, got nan"),
    ({"temperature": float("inf")}, "temperature", f"must be {TEMPERATURE}, got inf"),
    ({"temperature": "0.5"}, "temperature", f"must be {TEMPERATURE}, got '0.5'"),
    ({"temperature": False}, "temperature", f"must be {TEMPERATURE}, got False"),
    ({"top_k": 0}, "top_k", f"must be {INTEGER}, got 0"),
    ({"top_k": 5.0}, "top_k", f"must be {INTEGER}, got 5.0"),
    ({"top_p": 0}, "top_p", f"must be {TOP_P}, got 0"),
    ({"top_p": 7}, "top_p", f"must be {TOP_P}, got 7"),
    ({"top_p": 1.0000001}, "top_p", f"must be {TOP_P}, got 1.0000001"),
    ({"top_p": float("nan")}, "top_p", f"must be {TOP_P}, got nan"),
    ({"seed": 1.0}, "seed", f"must be {SEED}, got 1.0"),
    ({"seed": True}, "seed", f"must be {SEED}, got True"),
    ({"seed": "7"}, "seed", f"must be {SEED}, got '7'"),
    ({"seed": None}, "seed", f"must be {SEED}, got None"),
    ({"seed": 2**63}, "seed", f"must be {SEED}, got {2**63}"),
    ({"seed": -(2**63) - 1}, "seed", f"must be {SEED}, got {-(2**63) - 1}"),
]


@pytest.mark.parametrize("settings", ACCEPTED, ids=str)
def test_accepted_settings(settings: dict) -> None:
    sampling = Sampling(**settings)
    assert all(getattr(sampling, name) == value for name, value in settings.items())


@pytest.mark.parametrize(("settings", "setting", "problem"), REFUSED, ids=str)
def test_refused_settings_name_the_setting(settings: dict, setting: str, problem: str) -> None:
    with pytest.raises(SamplingError) as e:
        Sampling(**settings)
    assert (e.value.setting, e.value.problem) == (setting, problem)
    assert str(e.value) == f"{setting}: {problem}"
    assert isinstance(e.value, XinslmError)  # a stage or the CLI shows it as one line
