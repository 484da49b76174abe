/* Floor init for benchmarks: the least a PID 1 can do to say "I'm running".
 * It prints one marker line on the console and reboots, which QEMU's
 * -no-reboot turns into an exit. */
#include <unistd.h>
#include <sys/reboot.h>

int main(void) {
  static const char msg[] = "FLOOR-INIT-UP\n";
  (void)!write(1, msg, sizeof msg - 1);
  sync();
  reboot(RB_AUTOBOOT);
  for (;;) pause();
}
