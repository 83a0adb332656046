"""``manage.py simulate_tasks``: append a realistic task history across three tenants."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_eventsource import EventStore
from tasks import services

TENANTS = ("acme", "globex", "initech")
PEOPLE = ("ada", "grace", "linus", "margaret", "ken", "barbara", "guido", "radia")
VERBS = ("Fix", "Write", "Review", "Ship", "Plan", "Refactor", "Test", "Document", "Migrate")
THINGS = (
    "the login page",
    "invoice export",
    "billing emails",
    "the onboarding flow",
    "search ranking",
    "the nightly backup",
    "API rate limits",
    "the pricing page",
    "CSV import",
    "audit log",
)
REASONS = ("failed QA", "customer reported a regression", "missed an edge case", "spec changed")


class Command(BaseCommand):
    help = (
        "Append a realistic history of tasks across three tenants (acme, globex, initech): "
        "tasks are created, assigned, reassigned, completed and reopened, interleaved as "
        "they would be in real life. Every event goes through EventStore().append with an "
        "expected version; the inline task_cards projection follows in the same transaction."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tasks", type=int, default=300, help="Tasks to create.")
        parser.add_argument(
            "--seed", type=int, default=None, help="Random seed, for a reproducible history."
        )
        parser.add_argument(
            "--days", type=int, default=30, help="Spread occurred_at over this many past days."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["tasks"] <= 0:
            raise CommandError("--tasks must be a positive integer.")
        if options["days"] <= 0:
            raise CommandError("--days must be a positive integer.")
        rng = random.Random(options["seed"])
        store = EventStore()
        plan = self._plan(rng, options["tasks"])
        steps = sum(len(actions) for _, actions in plan)
        start = timezone.now() - timedelta(days=options["days"])
        step_time = timedelta(days=options["days"]) / max(steps, 1)
        created: dict[int, UUID] = {}
        appended = 0
        done_steps = 0
        next_report = 0.1
        verbosity = options["verbosity"]
        if verbosity >= 1:
            self.stdout.write(
                self.style.MIGRATE_HEADING(
                    f"Simulating {options['tasks']} tasks across {len(TENANTS)} tenants "
                    f"({steps} commands):"
                )
            )
        # Interleave the tasks: at each step, advance a random task that has work left.
        pending = [(tenant, list(actions)) for tenant, actions in plan]
        while pending:
            index = rng.randrange(len(pending))
            tenant, actions = pending[index]
            action = actions.pop(0)
            if not actions:
                pending[index] = pending[-1]
                pending.pop()
            occurred_at = start + step_time * done_steps
            extra = {"occurred_at": occurred_at, "metadata": {"source": "simulate_tasks"}}
            stored = action(store, tenant, created, **extra)
            appended += len(stored)
            done_steps += 1
            if verbosity >= 1 and done_steps / steps >= next_report:
                self.stdout.write(f"  {done_steps}/{steps} commands, {appended} events appended")
                next_report += 0.1
        if verbosity >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Appended {appended} events; head position {store.head_position()}."
                )
            )

    def _plan(self, rng: random.Random, count: int) -> list[tuple[str, list[Action]]]:
        """Each task's commands in order; the tasks are interleaved when they are run."""
        plan = []
        for number in range(count):
            tenant = rng.choices(TENANTS, weights=(5, 3, 2))[0]
            title = f"{rng.choice(VERBS)} {rng.choice(THINGS)}"
            first_assignee = _maybe(rng, 0.5, PEOPLE)
            actions: list[Action] = [_create(number, title, first_assignee)]
            assigned = bool(first_assignee)
            if not assigned and rng.random() < 0.8:
                actions.append(_assign(number, rng.choice(PEOPLE)))
                assigned = True
            if assigned and rng.random() < 0.2:
                actions.append(_assign(number, rng.choice(PEOPLE)))  # reassigned
            if rng.random() < 0.65:
                actions.append(_complete(number))
                while rng.random() < 0.2:
                    actions.append(_reopen(number, rng.choice(REASONS)))
                    if rng.random() < 0.8:
                        actions.append(_complete(number))
                    else:
                        break
            plan.append((tenant, actions))
        return plan


Action = Callable[..., list[Any]]


def _maybe(rng: random.Random, probability: float, choices: tuple[str, ...]) -> str:
    return rng.choice(choices) if rng.random() < probability else ""


def _create(number: int, title: str, assignee: str) -> Action:
    def create(
        store: EventStore, tenant: str, created: dict[int, UUID], **extra: Any
    ) -> list[Any]:
        stored = services.create_task(store, tenant, title, assignee=assignee, **extra)
        created[number] = stored[0].aggregate_id
        return stored

    return create


def _assign(number: int, person: str) -> Action:
    def assign(
        store: EventStore, tenant: str, created: dict[int, UUID], **extra: Any
    ) -> list[Any]:
        try:
            return services.assign_task(store, tenant, created[number], person, **extra)
        except services.TaskRuleError:
            return []  # reassigned to the same person: nothing happens, as in real life

    return assign


def _complete(number: int) -> Action:
    def complete(
        store: EventStore, tenant: str, created: dict[int, UUID], **extra: Any
    ) -> list[Any]:
        return services.complete_task(store, tenant, created[number], **extra)

    return complete


def _reopen(number: int, reason: str) -> Action:
    def reopen(
        store: EventStore, tenant: str, created: dict[int, UUID], **extra: Any
    ) -> list[Any]:
        return services.reopen_task(store, tenant, created[number], reason, **extra)

    return reopen
