"""The closed set of errors and their wire codes."""

import grpc
import pytest

from ember import errors


def error_kinds() -> list[type[errors.Error]]:
    return [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.Error)
    ]


def test_every_error_kind_has_a_grpc_code() -> None:
    assert set(errors.GRPC_CODES) == set(error_kinds()) - {errors.Error}
    for code in errors.GRPC_CODES.values():
        assert code in grpc.StatusCode.__members__


@pytest.mark.parametrize("kind", [errors.NotFoundError, errors.InvalidError, errors.ExecutionError])
def test_a_kind_alone_on_its_code_comes_back_as_itself(kind: type[errors.Error]) -> None:
    assert errors.ERROR_FOR_CODE[errors.GRPC_CODES[kind]] is kind


def test_a_code_shared_by_a_subclass_comes_back_as_the_base() -> None:
    assert errors.ERROR_FOR_CODE["INVALID_ARGUMENT"] is errors.InvalidError


def test_the_class_rebuilt_for_a_code_is_a_base_of_every_kind_using_it() -> None:
    for kind, code in errors.GRPC_CODES.items():
        assert issubclass(kind, errors.ERROR_FOR_CODE[code]), (kind, code)
