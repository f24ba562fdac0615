"""cfwf_async: a fast asyncio client for Cloudflare Workflows.

Read an instance's status and step log, and fetch any step's full output, JSON or
streamed bytes::

    import anyio
    from cfwf_async import WorkflowsSession

    async def main() -> None:
        async with WorkflowsSession() as session:
            inst = await session.get_instance("checkout", "order-981")
            print(inst.status)

    anyio.run(main)
"""

from ._retry import RetryBudget
from ._version import __version__
from .batch import (
    Batch,
    BatchFailure,
    BatchProgress,
    BatchResult,
    BatchSuccess,
    StepRef,
    StreamedOutput,
)
from .cache import Cache, CacheKey, MemoryCache
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    OutcomeUnknownError,
    OutputTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RateLimiterUnavailableError,
    StreamError,
    WorkflowsError,
)
from .listing import InstanceListing, Listing, PageListing
from .models import (
    INSTANCE_STATUSES,
    TERMINAL_STATUSES,
    Attempt,
    BatchItemError,
    CreatedInstance,
    ErrorInfo,
    ErrorItem,
    ErrorSource,
    Instance,
    InstanceBatchResult,
    InstanceRollback,
    InstanceSummary,
    NewInstance,
    RetryConfig,
    RollbackStep,
    Schedule,
    SleepStep,
    StatusChange,
    Step,
    StepConfig,
    StepOutput,
    StepRun,
    TerminationStep,
    Trigger,
    UnknownStep,
    VersionGraph,
    WaitForEventStep,
    Workflow,
    WorkflowInstanceCounts,
    WorkflowVersion,
)
from .ratelimit import Limiter, RateLimit, RateLimitInfo
from .session import WorkflowsSession
from .streaming import StepStream

__all__ = [
    "INSTANCE_STATUSES",
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "Attempt",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchFailure",
    "BatchItemError",
    "BatchProgress",
    "BatchResult",
    "BatchSuccess",
    "Cache",
    "CacheKey",
    "ConflictError",
    "CreatedInstance",
    "ErrorInfo",
    "ErrorItem",
    "ErrorSource",
    "Instance",
    "InstanceBatchResult",
    "InstanceListing",
    "InstanceRollback",
    "InstanceSummary",
    "InternalServerError",
    "Limiter",
    "Listing",
    "MemoryCache",
    "NewInstance",
    "NotFoundError",
    "OutcomeUnknownError",
    "OutputTooLargeError",
    "PageListing",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitError",
    "RateLimitInfo",
    "RateLimiterUnavailableError",
    "RetryBudget",
    "RetryConfig",
    "RollbackStep",
    "Schedule",
    "SleepStep",
    "StatusChange",
    "Step",
    "StepConfig",
    "StepOutput",
    "StepRef",
    "StepRun",
    "StepStream",
    "StreamError",
    "StreamedOutput",
    "TerminationStep",
    "Trigger",
    "UnknownStep",
    "VersionGraph",
    "WaitForEventStep",
    "Workflow",
    "WorkflowInstanceCounts",
    "WorkflowVersion",
    "WorkflowsError",
    "WorkflowsSession",
    "__version__",
]
