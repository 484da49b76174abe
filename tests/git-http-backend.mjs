// `git http-backend` as CGI behind a Node HTTP(S) request handler: the smart-HTTP
// git server the interception tests clone from. Plain JS so fixtures that run
// without TypeScript can use it too.
import { execFileSync, spawn } from "node:child_process";
import { join } from "node:path";

const backend = () => join(execFileSync("git", ["--exec-path"]).toString().trim(), "git-http-backend");

/** Serves one request for repositories below `projectRoot`. */
export function serveGit(req, res, projectRoot) {
  const url = new URL(req.url, "http://x");
  const cgi = spawn(backend(), [], {
    env: {
      GIT_PROJECT_ROOT: projectRoot,
      GIT_HTTP_EXPORT_ALL: "1",
      PATH_INFO: url.pathname,
      QUERY_STRING: url.search.slice(1),
      REQUEST_METHOD: req.method,
      CONTENT_TYPE: req.headers["content-type"] ?? "",
      ...(req.headers["content-length"] ? { CONTENT_LENGTH: req.headers["content-length"] } : {}),
      ...(req.headers["content-encoding"] ? { HTTP_CONTENT_ENCODING: req.headers["content-encoding"] } : {}),
      ...(req.headers["git-protocol"] ? { GIT_PROTOCOL: req.headers["git-protocol"] } : {}),
      REMOTE_ADDR: req.socket.remoteAddress ?? "",
    },
  });
  req.pipe(cgi.stdin);
  // CGI output: headers (Status: among them), a blank line, the body.
  let head = Buffer.alloc(0);
  let inBody = false;
  cgi.stdout.on("data", (d) => {
    if (inBody) return void res.write(d);
    head = Buffer.concat([head, d]);
    const end = head.indexOf("\r\n\r\n");
    if (end < 0) return;
    inBody = true;
    let status = 200;
    for (const line of head.subarray(0, end).toString().split("\r\n")) {
      const i = line.indexOf(":");
      const [k, v] = [line.slice(0, i).trim(), line.slice(i + 1).trim()];
      if (k.toLowerCase() === "status") status = Number(v.split(" ")[0]);
      else res.setHeader(k, v);
    }
    res.writeHead(status);
    res.write(head.subarray(end + 4));
  });
  cgi.stdout.on("end", () => res.end());
}
