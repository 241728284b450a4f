@echo off
rem dockur/windows runs C:\OEM\install.bat once, at the end of the unattended Windows install.
rem It hands over to PowerShell: first-boot.ps1 installs Python and the bridge, registers the
rem every-boot task and starts the terminals' processes. Its log goes to C:\bridge\first-boot.log.
if not exist C:\bridge mkdir C:\bridge
powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%~dp0first-boot.ps1" >> C:\bridge\first-boot.log 2>&1
exit /b 0
