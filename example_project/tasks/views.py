"""A small task board: tenants, their tasks, and forms that append events."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from django_eventsource import ConcurrencyError, EventStore
from tasks import services
from tasks.models import TaskCard, TenantBoard


def _metadata(request: HttpRequest) -> dict[str, Any]:
    user = request.user.get_username() if request.user.is_authenticated else "anonymous"
    return {"source": "web", "user": user}


def index(request: HttpRequest) -> HttpResponse:
    """Every tenant: task counts from the inline read model, and its asynchronous board."""
    tenants = (
        TaskCard.objects.values("tenant_id")
        .annotate(total=Count("pk"), done=Count("pk", filter=Q(status=TaskCard.Status.DONE)))
        .order_by("tenant_id")
    )
    boards = {board.tenant_id: board for board in TenantBoard.objects.all()}
    rows = [{**tenant, "board": boards.get(tenant["tenant_id"])} for tenant in tenants]
    return render(request, "tasks/index.html", {"tenants": rows})


def tenant_tasks(request: HttpRequest, tenant: str) -> HttpResponse:
    cards = TaskCard.objects.filter(tenant_id=tenant).order_by("status", "-created_at")
    return render(
        request,
        "tasks/tenant.html",
        {"tenant": tenant, "cards": cards, "board": TenantBoard.objects.filter(tenant_id=tenant)},
    )


@require_POST
def create_task(request: HttpRequest, tenant: str) -> HttpResponse:
    try:
        services.create_task(
            EventStore(),
            tenant,
            request.POST.get("title", ""),
            assignee=request.POST.get("assignee", "").strip(),
            metadata=_metadata(request),
        )
    except services.TaskRuleError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Task created.")
    # The inline projection ran in the append's transaction: the new card is already there.
    return redirect("tasks:tenant", tenant=tenant)


ACTIONS = {"complete": services.complete_task, "reopen": services.reopen_task}


@require_POST
def task_action(request: HttpRequest, tenant: str, task_id: UUID, action: str) -> HttpResponse:
    command = ACTIONS.get(action)
    if command is None:
        return HttpResponse(status=404)
    try:
        command(EventStore(), tenant, task_id, metadata=_metadata(request))
    except (services.TaskRuleError, ConcurrencyError) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Task {action}d.")
    return redirect("tasks:tenant", tenant=tenant)
