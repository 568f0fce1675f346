"""MLflow's own server app, with a few lines of script in its page so that ``autolr ui`` opens where
the work is.

MLflow 3.17's UI picks its view (GenAI or model training) from the URL's ``workflowType`` or else from
the browser's ``localStorage`` (``mlflow.workflowType_v1``, "genai" when unset), not from the
experiment's ``mlflow.experimentKind`` tag; on a local server it also opens its assistant panel on the
first visit. So a fresh browser lands on a traces dashboard with no traces. The script below, run
before MLflow's bundle reads that storage:

1. opens the model-training view once per browser tab (the toggle then works as usual in that tab);
2. keeps the assistant panel closed unless the user opened it before (MLflow's own keys, set only when
   absent);
3. on an experiment's page opened without a view, for an experiment that has autolr's trials view
   (``keys.TRIALS_VIEW_TAG``), switches once per tab to that view: the trials flat, sorted by the
   objective, with the configuration as columns.

Everything else (the REST API, artifacts, the pages themselves) is MLflow's app untouched: the app is
registered as an ``mlflow.app`` entry point (``autolr``), so ``mlflow ui --app-name autolr`` serves it
with MLflow's own command line, process model and settings.
"""

from __future__ import annotations

import json

from autolr import keys

__all__ = ["app", "page_script"]

# MLflow's localStorage keys are ``<key>_v<version>`` holding JSON (its ``useLocalStorage`` hook).
_WORKFLOW_KEY = "mlflow.workflowType_v1"
_KEEP_IF_SET = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True, "mlflow.assistant.panelOpen_v1": False}


def page_script() -> str:
    """The ``<script>`` put first in the page's ``<head>``."""
    view = f"runs?workflowType=machine_learning&viewStateShareKey={keys.TRIALS_VIEW}"
    return f"""<script>(function () {{
  try {{
    var L = window.localStorage, S = window.sessionStorage;
    if (!S.getItem("autolr.view")) {{ S.setItem("autolr.view", "1"); L.setItem({json.dumps(_WORKFLOW_KEY)}, JSON.stringify("machine_learning")); }}
    var keep = {json.dumps(_KEEP_IF_SET)};
    Object.keys(keep).forEach(function (k) {{ if (L.getItem(k) === null) L.setItem(k, JSON.stringify(keep[k])); }});
    function toTrials() {{
      var m = location.hash.match(/^#\\/experiments\\/(\\d+)(\\/runs)?\\/?(\\?.*)?$/);
      if (!m || location.hash.indexOf("viewStateShareKey") >= 0 || S.getItem("autolr.trials." + m[1])) return;
      S.setItem("autolr.trials." + m[1], "1");
      fetch("ajax-api/2.0/mlflow/experiments/get?experiment_id=" + m[1]).then(function (r) {{ return r.json(); }}).then(function (d) {{
        var tags = (d.experiment && d.experiment.tags) || [];
        if (tags.some(function (t) {{ return t.key === {json.dumps(keys.TRIALS_VIEW_TAG)}; }}))
          location.replace("#/experiments/" + m[1] + "/" + {json.dumps(view)});
      }}).catch(function () {{}});
    }}
    toTrials();
    window.addEventListener("hashchange", toTrials);
  }} catch (e) {{}}
}})();</script>"""


class _AutolrUI:
    """An ASGI app: MLflow's (imported on the first request, so that MLflow's command line can look
    this object up cheaply) with :func:`page_script` injected into the HTML page it serves."""

    def __init__(self) -> None:
        self._mlflow_app = None
        self._script = page_script().encode()

    async def __call__(self, scope, receive, send) -> None:
        if self._mlflow_app is None:
            from mlflow.server.fastapi_app import app as mlflow_app

            self._mlflow_app = mlflow_app
        if scope["type"] != "http" or scope["method"] != "GET" or "." in scope["path"].rsplit("/", 1)[-1]:
            await self._mlflow_app(scope, receive, send)  # the API, assets, artifacts: untouched
            return
        plain = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"accept-encoding"]  # the page, not gzipped
        await self._mlflow_app({**scope, "headers": plain}, receive, _Injecting(send, self._script))


class _Injecting:
    """Wraps ``send``: an HTML response is held until its last chunk, then sent with the script first in
    ``<head>`` and its length corrected; any other response passes through as it comes."""

    def __init__(self, send, script: bytes) -> None:
        self._send, self._script = send, script
        self._start: dict | None = None
        self._body = bytearray()

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            headers = dict((k.lower(), v) for k, v in message.get("headers", []))
            if headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers:
                self._start = message
                return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._body += message.get("body", b"")
        if message.get("more_body"):
            return
        body = bytes(self._body).replace(b"<head>", b"<head>" + self._script, 1)
        headers = [(k, v) for k, v in self._start.get("headers", []) if k.lower() != b"content-length"]
        await self._send({**self._start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await self._send({"type": "http.response.body", "body": body})


app = _AutolrUI()
