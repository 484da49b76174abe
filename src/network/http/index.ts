/** HTTP(S) interception for flows accepted with `matchHttp(...).accept(middleware)`. */
export { createHttpInterceptor } from "./intercept.js";
export type { HttpInterceptor, HttpInterceptorOptions } from "./intercept.js";
export { startInterception } from "./interception.js";
export type { BootInterception } from "./interception.js";
export { createSandboxCa, SandboxCa } from "./ca.js";
export type { CaOptions } from "./ca.js";
export { HttpHeaders } from "./headers.js";
export { createSecrets, secretPlaceholders, secretsMiddleware, composeMiddleware, hostAllowed } from "./secrets.js";
export type { Secrets, SecretsSpec, SecretSpec, SecretEvent, Redaction } from "./secrets.js";
export type {
  FlowEndpoint,
  HttpDenyReason,
  HttpEvent,
  HttpEventType,
  HttpMiddleware,
  HttpVersion,
  InterceptedFlow,
  InterceptedRequest,
  InterceptHandler,
} from "./types.js";
