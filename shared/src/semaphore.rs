//! Fleet-wide leased semaphores (see DESIGN.md, "Leased semaphores").
