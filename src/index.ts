export { defineSandbox, listBuiltInImages } from "./sandbox.js";
export type { Sandbox, SandboxDefinition, SandboxResources, BootOptions, LaneEvent, IdleHibernateEvent } from "./sandbox.js";
export { Lane } from "./lane.js";
export { SandboxSnapshot } from "./snapshot.js";
export type { CheckpointOptions, SnapshotBootOptions, SnapshotStats, SnapshotBooter } from "./snapshot.js";
export { DirectorySnapshotStore, listSavedSnapshots } from "./snapshot-store.js";
export type { SandboxSnapshotStore, SnapshotRequirements, SnapshotManifest } from "./snapshot-store.js";
export { LaneFileSystem } from "./lane-fs/index.js";
export type { TransferOptions, TransferProgress, TransferRefusal } from "./lane-fs/trees.js";
export { GuestWatcher } from "./lane-fs/watch.js";
export type { GuestWatchEvent, GuestWatchEventType, WatchOptions } from "./lane-fs/watch.js";
export type { GuestFileStats, GuestFileType, GuestDirEntry, ReadFileOptions, WriteFileOptions, MkdirOptions, RmOptions } from "./lane-fs/index.js";
export type { ExecOptions, ExecResult, LaneInfo, SpawnOptions, PtyOptions, SandboxProcess, SandboxPty } from "./lane.js";
export type { StoreRetryEvent } from "./rootfs/block-store.js";
export type { StoreRetryPolicy } from "./rootfs.js";
export type { ProcessExit, TerminalSize } from "./process.js";
export { rootfs } from "./rootfs.js";
export { fs } from "./fs/index.js";
export type {
  SandboxFileSystem,
  SandboxFileHandle,
  SandboxFileStats,
  SandboxDirEntry,
  VirtualMount,
  FileSystemSource,
  MemoryFileSystem,
  MemoryFileSystemOptions,
  VirtualOptions,
  HostDirOptions,
} from "./fs/index.js";
export type { RootfsSpec, BuiltInRootfs, BaseImage, ImageFileRootfs, EphemeralRootfs, CowRootfs } from "./rootfs.js";
export { importImage } from "./images/import.js";
export type { ImportImageOptions, ImportedImage, ImportProgress } from "./images/import.js";
export { listImages, removeImage } from "./images/list.js";
export type { ImageInfo } from "./images/list.js";
export type { RootfsBuildOptions, BuildStep, BuiltRootfs } from "./images/build.js";
export { loadSandboxfile } from "./images/sandboxfile.js";
export type { Sandboxfile } from "./images/sandboxfile.js";
export type { ImageConfigDefaults, ImageUser } from "./images/store.js";
export type { SandboxBlockStore, SandboxBlockStoreContext, SandboxBlockChunk, SandboxBlockRange } from "./rootfs/block-store.js";
export { MemoryBlockStore } from "./rootfs/memory-store.js";
export { DirectoryBlockStore } from "./rootfs/directory-store.js";
export { MemoryImageStore } from "./rootfs/image-export.js";
export type { ComposedRootfs, FlattenedImage, ImageByteStore } from "./rootfs/image-export.js";
export type { BackendName, BackendChoice } from "./backend.js";
export type { ImageEntry } from "./artifacts.js";
export {
  SandboxError,
  SandboxConfigError,
  UnknownImageError,
  ImageDigestMismatchError,
  RegistryAuthError,
  ImageImportError,
  ImageBuildError,
  SandboxArtifactError,
  SandboxBootError,
  SandboxCrashedError,
  SandboxProtocolError,
  SandboxUnresponsiveError,
  LaneClosedError,
  ProcessStartError,
  OutputLimitError,
  SandboxFileSystemError,
  BlockStoreError,
  BlockStoreBaseMismatchError,
  PortForwardError,
  SandboxSnapshotError,
} from "./errors.js";
export type { BlockStoreOp, ImageImportFailure, ProtocolOffender } from "./errors.js";
export { network } from "./network/policy.js";
export type {
  NetworkPolicy,
  NetworkPolicyOptions,
  NetworkPolicyCallback,
  NetworkEvent,
  SandboxConnection,
  Connection,
  DnsMatch,
  DnsAcceptOptions,
  HttpMatch,
  HttpAcceptOptions,
  HttpHostMatcher,
  TransportMatch,
  SandboxSecrets,
  SecretEvent,
} from "./network/policy.js";
export { Endpoint } from "./network/endpoint.js";
export {
  createHttpInterceptor,
  startInterception,
  createSandboxCa,
  SandboxCa,
  HttpHeaders,
  createSecrets,
  composeMiddleware,
} from "./network/http/index.js";
export type {
  HttpInterceptor,
  HttpInterceptorOptions,
  BootInterception,
  HttpEvent,
  HttpMiddleware,
  HttpVersion,
  InterceptedFlow,
  InterceptedRequest,
  InterceptHandler,
  Secrets,
  SecretsSpec,
  Redaction,
} from "./network/http/index.js";
