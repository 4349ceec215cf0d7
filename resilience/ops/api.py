"""Staff-only operations API: fault injection for drills and tests."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import IsShopStaff
from resilience.ops import faults


class FaultInput(serializers.Serializer[Any]):
    mode = serializers.ChoiceField(choices=["error", "slow"])
    delay_ms = serializers.IntegerField(min_value=0, max_value=faults.MAX_DELAY_MS, required=False, default=1000)
    ttl = serializers.IntegerField(min_value=1, max_value=86_400, required=False, default=300)


class FaultOutput(serializers.Serializer[Any]):
    name = serializers.CharField()
    active = serializers.DictField(allow_null=True)
    calls = serializers.IntegerField()
    in_progress = serializers.IntegerField(help_text="Calls inside the slow fault now.")
    peak = serializers.IntegerField(help_text="The most calls inside it at once since the fault was set.")


class FaultApi(APIView):
    permission_classes = [IsShopStaff]

    def initial(self, request: Request, *args: object, **kwargs: object) -> None:
        super().initial(request, *args, **kwargs)
        if not settings.FAULT_INJECTION:
            raise exceptions.NotFound("Fault injection is off (set FAULT_INJECTION=true).")

    @extend_schema(responses=FaultOutput, operation_id="ops_fault_get")
    def get(self, request: Request, name: str) -> Response:
        return Response(faults.fault_get(name=name))

    @extend_schema(request=FaultInput, responses=FaultOutput, operation_id="ops_fault_set")
    def put(self, request: Request, name: str) -> Response:
        data = FaultInput(data=request.data)
        data.is_valid(raise_exception=True)
        faults.fault_set(name=name, **data.validated_data)
        return Response(faults.fault_get(name=name))

    @extend_schema(responses={204: None}, operation_id="ops_fault_clear")
    def delete(self, request: Request, name: str) -> Response:
        faults.fault_clear(name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)
