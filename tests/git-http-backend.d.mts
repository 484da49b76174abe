import type { IncomingMessage, ServerResponse } from "node:http";
/** Serves one request for repositories below `projectRoot` through `git http-backend`. */
export function serveGit(req: IncomingMessage, res: ServerResponse, projectRoot: string): void;
