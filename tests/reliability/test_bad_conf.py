"""A bad --conf value stops the server at start, naming the setting (it once started with the value
silently read as "off", or stopped on a bare "could not convert string to float")."""

import pytest

from support import Server, copy_app


@pytest.mark.parametrize("name, value, message", [
    ("adapt_bn", "ture", "--conf adapt_bn must be true or false, got 'ture'"),
    ("sample_hold_s", "abc", "--conf sample_hold_s must be a number >= 0, got 'abc'"),
])
def test_a_bad_conf_value_stops_the_server_with_its_name(tmp_path, name, value, message):
    studies = tmp_path / "studies"
    studies.mkdir()
    app = copy_app(tmp_path / "app", with_weights=False)
    with pytest.raises(RuntimeError, match="server exited") as e:
        Server(app, studies, {name: value, "skip_trainers": "true"}, tmp_path / "server.log")
    assert message in str(e.value)
