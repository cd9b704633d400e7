"""Registry errors, each with the MLflow error code and HTTP status the API answers with."""

from __future__ import annotations

from mlfs.errors import MlfsError


class RegistryError(MlfsError):
    code = "INTERNAL_ERROR"
    status = 500


class DoesNotExist(RegistryError):
    code = "RESOURCE_DOES_NOT_EXIST"
    status = 404


class AlreadyExists(RegistryError):
    code = "RESOURCE_ALREADY_EXISTS"
    status = 400


class InvalidValue(RegistryError):
    code = "INVALID_PARAMETER_VALUE"
    status = 400


class Unauthenticated(RegistryError):
    code = "UNAUTHENTICATED"
    status = 401


class PermissionDenied(RegistryError):
    code = "PERMISSION_DENIED"
    status = 403
