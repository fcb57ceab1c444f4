"""Thin HTTP handlers: decode, call a service, map the result. Errors are raised, never formatted here."""

from gateway.http.routes.approvals import decide_approval, get_approval, list_approvals
from gateway.http.routes.chat import chat_completions
from gateway.http.routes.health import live, metrics, ready
from gateway.http.routes.models import get_model, list_models
from gateway.http.routes.responses import create_response, delete_response, get_response
from gateway.http.routes.review import audit_session, audit_sessions, review_page
from gateway.http.routes.sessions import delete_session, get_session, list_sessions
from gateway.http.routes.tools import check_tool_calls

ROUTES = [
    chat_completions, create_response, get_response, delete_response, list_models, get_model,
    list_sessions, get_session, delete_session, list_approvals, get_approval, decide_approval, check_tool_calls,
    review_page, audit_sessions, audit_session,
    live, ready, metrics,
]  # fmt: skip
