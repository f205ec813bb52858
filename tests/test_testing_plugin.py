"""The pytest plugin of ``kuya_store.testing``, run from a throwaway project with pytester."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def _files_of_the_docs() -> dict[str, str]:
    """The example files of docs/testing.md, by the name on their first line."""
    blocks = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", DOCS.read_text(), re.DOTALL)
    return dict(blocks)


def test_the_plugin_is_registered_for_pytest() -> None:
    found = {e.name: e.value for e in entry_points(group="pytest11")}
    assert found.get("kuya_store") == "kuya_store.testing.plugin"


def test_an_app_route_is_tested_with_no_conftest(pytester: pytest.Pytester) -> None:
    files = _files_of_the_docs()
    assert set(files) == {"app.py", "test_app.py"}
    pytester.makepyfile(**{name.removesuffix(".py"): body for name, body in files.items()})
    # A new process loads the plugin from the installed entry point, as an app's run does.
    done = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    done.assert_outcomes(passed=2)


def test_a_store_fixture_failure_is_reported_not_hidden(pytester: pytest.Pytester) -> None:
    # The market's calls are really counted: a wrong expectation fails the app's test.
    pytester.makepyfile(
        test_wrong="""
        import pytest

        @pytest.mark.asyncio
        async def test_counts(kuya_store, kuya_market):
            await kuya_store.comps.search("1986 Fleer Michael Jordan #57")
            await kuya_store.comps.search("1986 Fleer Michael Jordan #57")
            assert kuya_market.call_count == 2  # the second search is a hit
        """
    )
    done = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    done.assert_outcomes(failed=1)
    done.stdout.fnmatch_lines(["*assert 1 == 2*"])


def test_the_app_gets_its_own_store_back_after_the_test(pytester: pytest.Pytester) -> None:
    files = _files_of_the_docs()
    pytester.makepyfile(app=files["app.py"])
    pytester.makepyfile(
        test_after="""
        from app import app
        from kuya_store.integrations.fastapi import TEST_FACTORY_KEY

        def test_one(kuya_app):
            with kuya_app(app) as client:
                assert client.get("/comps", params={"q": "1986 Fleer Michael Jordan #57"}).status_code == 200

        def test_two():
            # the substitute is gone: the app would open its configured store again
            assert not hasattr(app.state, TEST_FACTORY_KEY)
        """
    )
    done = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    done.assert_outcomes(passed=2)
