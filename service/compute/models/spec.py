"""What the HTTP side may know of a served model without TensorFlow: signatures, load refusals, unsafe ops.

Nothing here imports TensorFlow, so the repository and the adapters can import it on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SERVED_DTYPES = ("float32", "float64", "int32", "int64")
"""Input dtypes a served signature may have (the JSON tensors of API.md §1)."""
FLOAT_DTYPES = ("float32", "float64")
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"

UNSAFE_OPS: dict[str, str] = {
    **dict.fromkeys(("ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst"), "files"),
    **dict.fromkeys(("Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice"), "files"),
    **dict.fromkeys(("MergeV2Checkpoints", "LoadAndRemapMatrix", "GenerateVocabRemapping"), "files"),
    **dict.fromkeys(("InitializeTableFromTextFile", "InitializeTableFromTextFileV2"), "files"),
    **dict.fromkeys(("DecodeProtoV2", "EncodeProto"), "files"),  # a descriptor_source may name a file
    **dict.fromkeys(
        (
            "TFRecordReader",
            "TFRecordReaderV2",
            "TextLineReader",
            "TextLineReaderV2",
            "WholeFileReader",
            "WholeFileReaderV2",
            "FixedLengthRecordReader",
            "FixedLengthRecordReaderV2",
            "IdentityReader",
            "IdentityReaderV2",
            "LMDBReader",
        ),
        "files",
    ),
    **dict.fromkeys(
        (
            "TFRecordDataset",
            "TFRecordDatasetV2",
            "TextLineDataset",
            "FixedLengthRecordDataset",
            "FixedLengthRecordDatasetV2",
            "CSVDataset",
            "CSVDatasetV2",
            "ExperimentalCSVDataset",
            "LMDBDataset",
            "ExperimentalLMDBDataset",
            "SqlDataset",
            "ExperimentalSqlDataset",
            "SaveDataset",
            "SaveDatasetV2",
            "LoadDataset",
            "ExperimentalDatasetToTFRecord",
            "DatasetToTFRecord",
            "SnapshotDataset",
            "SnapshotDatasetV2",
            "CacheDataset",
            "CacheDatasetV2",
        ),
        "files",
    ),
    **dict.fromkeys(
        (
            "CreateSummaryFileWriter",
            "CreateSummaryDbWriter",
            "WriteSummary",
            "WriteScalarSummary",
            "WriteHistogramSummary",
            "WriteImageSummary",
            "WriteAudioSummary",
            "WriteGraphSummary",
            "WriteRawProtoSummary",
            "ImportEvent",
            "FlushSummaryWriter",
            "CloseSummaryWriter",
        ),
        "files",
    ),
    **dict.fromkeys(
        (
            "DataServiceDataset",
            "DataServiceDatasetV2",
            "DataServiceDatasetV3",
            "DataServiceDatasetV4",
            "RegisterDataset",
            "RegisterDatasetV2",
            "Rpc",
            "TryRpc",
            "RpcClient",
            "RpcServer",
            "RpcCall",
            "CollectiveReduce",
            "CollectiveReduceV2",
            "CollectiveReduceV3",
            "CollectiveGather",
            "CollectiveGatherV2",
            "CollectiveBcastSend",
            "CollectiveBcastSendV2",
            "CollectiveBcastRecv",
            "CollectiveBcastRecvV2",
            "CollectiveAllToAllV2",
            "CollectiveAllToAllV3",
            "NcclAllReduce",
            "_Send",
            "_Recv",
            "_HostSend",
            "_HostRecv",
        ),
        "network",
    ),
    **dict.fromkeys(("PyFunc", "PyFuncStateless", "EagerPyFunc"), "Python callbacks (processes and anything else)"),
    **dict.fromkeys(("Print", "PrintV2"), "printing"),
    **dict.fromkeys(
        (
            "DebugIdentity",
            "DebugIdentityV2",
            "DebugIdentityV3",
            "DebugNanCount",
            "DebugNumericSummary",
            "DebugNumericSummaryV2",
        ),
        "debugger output",
    ),
}
"""Ops that reach outside the computation, by what they reach: a SavedModel whose serving functions (nested
functions included) hold one is refused unless TAPESERVE_ALLOW_UNSAFE_OPS=true. TensorFlow has no op that
starts a process: a Python callback is the way to one, and is refused as such."""


class LoadRefused(Exception):
    """A version that cannot be served: `code` is TensorFlow's canonical error code, `message` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature, as TF Serving's metadata describes it."""

    name: str
    dtype: str
    """numpy name: float32, float64, int32, int64 (outputs may have others TensorFlow makes)."""
    shape: tuple[int | None, ...] | None
    """None for an unknown rank; None inside for an unknown dimension (-1 in TF Serving's JSON)."""
    tensor_name: str

    @property
    def batched(self) -> bool:
        """Whether the first dimension is free, so instances can be stacked and merged along it."""
        return self.shape is not None and len(self.shape) >= 1 and self.shape[0] is None


@dataclass(frozen=True)
class SignatureInfo:
    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    method_name: str = PREDICT_METHOD

    @property
    def batched(self) -> bool:
        return all(info.batched for info in self.inputs.values())


Loss = Literal["cross_entropy", "binary_cross_entropy", "mean_squared_error"]
Reduction = Literal["sum", "mean", "none"]
TargetKind = Literal["output", "class_index", "output_gradients", "loss"]


@dataclass(frozen=True)
class GradientRequest:
    """What to differentiate (`kind` on `output`) with respect to what (`sources` inputs, `variables`)."""

    output: str
    sources: tuple[str, ...]
    kind: TargetKind = "output"
    loss: Loss = "cross_entropy"
    reduction: Reduction = "sum"
    variables: bool = False
    unconnected: Literal["none", "zero"] = "none"
