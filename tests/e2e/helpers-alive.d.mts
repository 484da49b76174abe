/** Whether a host pid is alive (zombies count as gone). */
export function alive(pid: number): boolean;
