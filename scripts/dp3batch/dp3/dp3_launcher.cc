// DP3 without Python: the dp3 wheel's libDP3, entered where the wheel's DP3.py enters it.
//
// DP3.py imports the `dp3` Python package (numpy with it) and then calls
// dp3::base::ExecuteFromCommandLine with its command line. This program calls the same
// function with the same arguments, and prints an exception the way DP3's own main does.
// Built by `python -m dp3batch.dp3.native` (make setup); see native.py.
//
// With DP3BATCH_PDEATHSIG_PARENT=<pid> in its environment it first asks the kernel for
// SIGKILL when the thread that started it dies, as `setpriv --pdeathsig KILL` would, and
// dies at once if <pid> is no longer its parent (it died before the request took hold):
// a task's DP3 never outlives its worker, and starting it takes no second program.
#include <sys/prctl.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <exception>
#include <iostream>

namespace dp3 {
namespace base {
void ExecuteFromCommandLine(int argc, char* argv[]);
}  // namespace base
}  // namespace dp3

namespace {
const char kParentVariable[] = "DP3BATCH_PDEATHSIG_PARENT";

void DieWithParent() {
  const char* parent = std::getenv(kParentVariable);
  if (parent == nullptr) return;
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != std::atol(parent)) {
    raise(SIGKILL);
  }
  unsetenv(kParentVariable);  // not for what DP3 itself may start
}
}  // namespace

int main(int argc, char* argv[]) {
  DieWithParent();
  try {
    dp3::base::ExecuteFromCommandLine(argc, argv);
  } catch (const std::exception& error) {
    std::cerr << "\nstd exception detected: " << error.what() << std::endl;
    return 1;
  }
  return 0;
}
