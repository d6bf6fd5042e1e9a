"""The Xinference v2 registration schema, as the SDK's users import it (it lives in berth_spec, shared with the server)."""

from berth_spec.registration import (
    MODEL_TYPES,
    NAME_MAX_LENGTH,
    REGISTRATION_CLASSES,
    Ability,
    AudioAbility,
    AudioRegistration,
    EmbeddingRegistration,
    EncoderSpec,
    ImageAbility,
    ImageRegistration,
    LLMRegistration,
    LLMSpec,
    MediaSpec,
    ModelType,
    Registration,
    RegistrationError,
    RerankRegistration,
    check_model_type,
    check_name,
    parse_registration,
    size_key,
)

__all__ = [
    "MODEL_TYPES", "NAME_MAX_LENGTH", "REGISTRATION_CLASSES", "Ability", "AudioAbility", "AudioRegistration",
    "EmbeddingRegistration", "EncoderSpec", "ImageAbility", "ImageRegistration", "LLMRegistration", "LLMSpec",
    "MediaSpec", "ModelType", "Registration", "RegistrationError", "RerankRegistration", "check_model_type",
    "check_name", "parse_registration", "size_key",
]
