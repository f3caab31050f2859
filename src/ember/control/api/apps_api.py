"""The `Ember` service's apps: create, publish, deploy, heartbeat, stop, list, logs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ember.control.api.errors import translate_errors
from ember.control.api.service import Context, PlaneService
from ember.control.scheduler.cluster import FunctionInfo
from ember.control.store.apps import LIVE_STATES
from ember.proto import api_pb2


class AppsApi(PlaneService):
    @translate_errors
    async def AppCreate(
        self, request: api_pb2.AppCreateRequest, context: Context
    ) -> api_pb2.AppCreateResponse:
        state = api_pb2.APP_STATE_DETACHED if request.detach else api_pb2.APP_STATE_EPHEMERAL
        app_id = await self._plane.store.apps.create(
            request.name, state, self._plane.clock.now(), request.client_key
        )
        self._plane.cluster.app_live(app_id)
        return api_pb2.AppCreateResponse(app_id=app_id)

    @translate_errors
    async def AppPublish(
        self, request: api_pb2.AppPublishRequest, context: Context
    ) -> api_pb2.AppPublishResponse:
        ids = await self._plane.store.apps.publish(
            request.app_id, request.source_blob_id, list(request.functions)
        )
        # What the store holds: a repeated publish keeps the definitions of the first.
        for function in await self._plane.store.apps.functions_of([request.app_id]):
            self._remember(function.function_id, request.app_id, function.definition)
        return api_pb2.AppPublishResponse(function_ids=ids)

    @translate_errors
    async def AppDeploy(
        self, request: api_pb2.AppDeployRequest, context: Context
    ) -> api_pb2.AppDeployResponse:
        app, ids, replaced = await self._plane.store.apps.deploy(
            request.name, request.source_blob_id, list(request.functions), self._plane.clock.now()
        )
        self._plane.cluster.app_live(app.app_id)
        for definition in request.functions:
            self._remember(ids[definition.name], app.app_id, definition)
        if replaced:
            await self._plane.scheduler.stop_apps(replaced)
        return api_pb2.AppDeployResponse(app_id=app.app_id, version=app.version, function_ids=ids)

    def _remember(
        self, function_id: str, app_id: str, definition: api_pb2.FunctionDefinition
    ) -> None:
        self._plane.cluster.remember_function(FunctionInfo(function_id, app_id, definition))
        if definition.autoscaling.min_containers > 0:
            self._plane.scheduler.poke()

    @translate_errors
    async def AppHeartbeat(
        self, request: api_pb2.AppHeartbeatRequest, context: Context
    ) -> api_pb2.AppHeartbeatResponse:
        await self._plane.store.apps.heartbeat([request.app_id], self._plane.clock.now())
        return api_pb2.AppHeartbeatResponse()

    @translate_errors
    async def AppStop(
        self, request: api_pb2.AppStopRequest, context: Context
    ) -> api_pb2.AppStopResponse:
        app = await self._plane.store.apps.named(request.app_id, request.name)
        await self._plane.scheduler.stop_apps([app.app_id])
        return api_pb2.AppStopResponse(app_id=app.app_id)

    @translate_errors
    async def AppList(
        self, request: api_pb2.AppListRequest, context: Context
    ) -> api_pb2.AppListResponse:
        apps = await self._plane.store.apps.list(request.include_stopped)
        containers: dict[str, int] = {}
        for container in self._plane.cluster.containers.values():
            containers[container.app_id] = containers.get(container.app_id, 0) + 1
        return api_pb2.AppListResponse(
            apps=[
                api_pb2.AppSummary(
                    app_id=app.app_id,
                    name=app.name,
                    state=app.state,
                    version=app.version,
                    created_at=app.created_at,
                    containers=containers.get(app.app_id, 0),
                )
                for app in apps
            ]
        )

    @translate_errors
    async def AppLogs(
        self, request: api_pb2.AppLogsRequest, context: Context
    ) -> AsyncIterator[api_pb2.LogEntry]:
        app = await self._plane.store.apps.named(request.app_id, request.name)
        # A stopped app writes no more lines: show what it wrote and end, rather than wait.
        follow = request.follow and app.state in LIVE_STATES
        async for line in self._plane.logs.read(app.app_id, request.after_id, follow):
            yield api_pb2.LogEntry(
                app_id=line.app_id,
                function_name=line.function_name,
                container_id=line.container_id,
                fd=line.fd,
                data=line.data,
                timestamp=line.timestamp,
                log_id=line.log_id,
            )
